#!/usr/bin/env bash
# Install what qsf needs on Debian 12: apt packages, a virtualenv, the project.
# Idempotent and quick when everything is already there. Run as root.
#   QSF_VENV  the virtualenv to use or make (default /opt/qsf-venv)
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${QSF_VENV:-/opt/qsf-venv}
# Debian's interpreter, not a pyenv one on PATH: tests run programs as uid 1000,
# who cannot enter /root.
PYTHON=/usr/bin/python3

# Debian packages, one per line; append what your part needs.
APT_PACKAGES=(
    python3
    python3-venv
    python3-dev
    gcc
    make
    pkg-config
    libfuse3-dev
    fuse3
    diod
    socat
    sshfs
    openssh-server
    openssh-sftp-server
    fio
    stress-ng
    dbench
    attr
    inotify-tools
    qemu-system-x86
    busybox-static
    cpio
    xz-utils
    kmod
    util-linux
    sudo
    # packages (make deb, make rpm, make test-packages)
    debhelper
    dh-python
    pybuild-plugin-pyproject
    python3-all
    python3-setuptools
    python3-wheel
    python3-build
    python3-installer
    lintian
    rpm
    mmdebstrap
)

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

missing_packages() {
    local package
    for package in "${APT_PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null) != "ii "* ]]; then
            printf '%s\n' "$package"
        fi
    done
}

install_apt_packages() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        return
    fi
    ((EUID == 0)) || die "missing Debian packages (${missing[*]}): run this script as root"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Parallel installs (several checkouts on one machine) wait for the dpkg lock.
    apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -q -y --no-install-recommends "${missing[@]}"
}

make_venv() {
    if [[ -f $VENV/pyvenv.cfg ]]; then
        if grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" && [[ -x $VENV/bin/python ]]; then
            return
        fi
        say "$VENV was not made with $PYTHON: remaking it"
        "$PYTHON" -m venv --clear "$VENV"
    elif [[ -e $VENV && -n $(ls -A "$VENV") ]]; then
        die "$VENV exists and is not a virtualenv; remove it or set QSF_VENV"
    else
        say "making the virtualenv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --upgrade pip
}

# The checkout the venv's editable install points at now, if any.
installed_checkout() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null || true
import importlib.util, pathlib
spec = importlib.util.find_spec("qsf_p9")
if spec and spec.origin:
    print(pathlib.Path(spec.origin).resolve().parent.parent)
PY
}

install_project() {
    # Re-run every time: it is quick when nothing changed, and it points the
    # editable install at this checkout (CI clones elsewhere).
    local previous
    previous=$(cd / && installed_checkout)
    if [[ -n $previous && $previous != "$REPO" ]]; then
        say "note: $VENV pointed at $previous; it now runs this checkout ($REPO)." \
            "Run $previous/scripts/install.sh to point it back, or set QSF_VENV."
    fi
    local log
    log=$(mktemp)
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install -e '$REPO[test]' failed"
    fi
    rm -f "$log"
    # uid 1000 runs the venv's programs in the tests.
    chmod -R a+rX "$VENV"
}

install_apt_packages
make_venv
install_project
say "ready: $VENV ($("$VENV/bin/python" --version)), project at $REPO"
