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
    # Start-up mounts: systemd-analyze for the units, notify-send for notifications.
    systemd
    libnotify-bin
    # GTK dialogs (qsf_ask) and their tests: PyGObject, GTK 3, a virtual X server,
    # a session bus, the accessibility bus and its Python client, keyboard input,
    # screenshots.
    python3-gi
    gir1.2-gtk-3.0
    xvfb
    dbus-daemon
    dbus-bin
    at-spi2-core
    gir1.2-atspi-2.0
    python3-pyatspi
    xdotool
    imagemagick
    fonts-dejavu-core
    # Server-qube notifications (gdbus) and their test notification server.
    libglib2.0-bin
    dunst
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

# Debian's PyGObject (python3-gi) is built for /usr/bin/python3 but lives in
# /usr/lib/python3/dist-packages, which a venv does not see. Not
# --system-site-packages (then pip would count every Debian Python package as
# installed and the venv would differ from machine to machine): a folder in the
# venv holds links to just gi and pyatspi, and a .pth file appends that folder
# to sys.path after site-packages, so pip's packages still win.
SYSTEM_MODULES=(gi pyatspi)
link_system_gi() {
    local dist=/usr/lib/python3/dist-packages site links name
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    links=$VENV/qsf-system-modules
    mkdir -p "$links"
    for name in "${SYSTEM_MODULES[@]}"; do
        [[ -e $dist/$name ]] || die "$dist/$name is missing (its Debian package is in APT_PACKAGES)"
        ln -sfn "$dist/$name" "$links/$name"
    done
    printf '%s\n' "$links" >"$site/qsf-system-modules.pth"
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
link_system_gi
install_project
say "ready: $VENV ($("$VENV/bin/python" --version)), project at $REPO"
