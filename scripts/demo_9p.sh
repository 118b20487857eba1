#!/usr/bin/env bash
# Serve a sample folder with qsf-server and list and read it with diodls and
# diodcat (Debian's diod: 9P2000.L clients that speak TCP only, so socat bridges
# a loopback port to a qsf-server per connection). Cleans up after itself.
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/install.sh"

VENV=${QSF_VENV:-/opt/qsf-venv}
SERVER=$VENV/bin/qsf-server
QUBE_UID=1000 # the user of every Qubes qube, who runs qsf-server there

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }

for program in socat diodls diodcat "$SERVER"; do
    command -v "$program" >/dev/null || PATH=$PATH:/usr/sbin command -v "$program" >/dev/null ||
        { echo "demo: $program is missing: run scripts/install.sh" >&2; exit 1; }
done
export PATH=$PATH:/usr/sbin

work=$(mktemp -d /tmp/qsf-demo.XXXXXX)
chmod 755 "$work"
bridge_pid=
cleanup() {
    if [[ -n $bridge_pid ]]; then
        # socat and any server it still runs: its own process group
        kill -TERM -- "-$bridge_pid" 2>/dev/null || true
        wait "$bridge_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step "A sample folder: $work/share"
share=$work/share
mkdir -p "$share/photos 2026"
printf 'Hello from the server qube.\n' >"$share/hello.txt"
printf 'Shared folders for Qubes OS, over 9P2000.L.\n' >"$share/README"
printf 'a picture, pretend\n' >"$share/photos 2026/beach.jpg"
ln -s hello.txt "$share/link-to-hello"
head -c 300000 /dev/urandom >"$share/random.bin"
if ((EUID == 0)); then
    chown -R "$QUBE_UID:$QUBE_UID" "$share"
fi
(cd "$share" && find . | sort)

# Run the server as the qube's user, as qrexec does.
run_as_user=""
if ((EUID == 0)); then
    run_as_user="setpriv --reuid=$QUBE_UID --regid=$QUBE_UID --clear-groups --"
fi
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

step "Serve it: one qsf-server per connection on 127.0.0.1:$port"
echo "$ socat TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork EXEC:\"$run_as_user $SERVER $share\""
setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "EXEC:$run_as_user $SERVER $share" &
bridge_pid=$!
for _ in $(seq 50); do
    if "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.1).close()" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

diod_client=(-s "127.0.0.1:$port" -a "$share" -t 10)

step "List it with diodls (an independent 9P2000.L client)"
show diodls "${diod_client[@]}" /
show diodls "${diod_client[@]}" "photos 2026"

step "Read files with diodcat"
show diodcat "${diod_client[@]}" hello.txt README "photos 2026/beach.jpg"

step "Read a 300 kB binary file and compare it byte for byte"
echo "\$ diodcat ... random.bin | cmp - $share/random.bin"
diodcat "${diod_client[@]}" random.bin | cmp - "$share/random.bin"
echo "identical ($(stat -c %s "$share/random.bin") bytes)"

step "Done"
echo "qsf-server served $share over 9P2000.L; the demo now stops the bridge and removes $work."
