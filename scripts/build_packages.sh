#!/usr/bin/env bash
# Build qsf's packages from this checkout: `deb` (dpkg-buildpackage, then
# lintian) or `rpm` (rpmbuild from packaging/qsf.spec). The checkout's files
# (tracked and new, not ignored) are staged with freshly generated man pages
# under $QSF_PKG_OUT (default var/pkg, gitignored); packages land in
# $QSF_PKG_OUT/deb or $QSF_PKG_OUT/rpm/RPMS/noarch.
#   QSF_VENV     the virtualenv with argparse-manpage >= 4 (default /opt/qsf-venv)
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${QSF_VENV:-/opt/qsf-venv}
OUT=${QSF_PKG_OUT:-$REPO/var/pkg}
VERSION=$(cd "$REPO" && "$VENV/bin/python" -c \
    'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# Debian's own tools and interpreter, never one from pyenv or a venv on PATH.
SYSTEM_PATH=/usr/sbin:/usr/bin:/sbin:/bin
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}

say() { printf 'build_packages.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# $1: the staging folder; fills it with the source tree and man/.
stage() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\0" "$f"; done' _ \
        | tar --null -T - -cf -) | tar -xf - -C "$dir"
    "$VENV/bin/python" "$dir/packaging/manpages.py" "$dir/man" >/dev/null
}

build_deb() {
    local dir=$OUT/deb/qsf-$VERSION
    mkdir -p "$OUT/deb"
    rm -f "$OUT"/deb/*.deb "$OUT"/deb/*.changes "$OUT"/deb/*.buildinfo
    stage "$dir"
    cp -rL "$dir/packaging/debian" "$dir/debian"
    say "dpkg-buildpackage in $dir"
    (cd "$dir" && PATH=$SYSTEM_PATH dpkg-buildpackage -b -us -uc) >"$OUT/deb/build.log" 2>&1 \
        || { tail -40 "$OUT/deb/build.log" >&2; die "dpkg-buildpackage failed ($OUT/deb/build.log)"; }
    say "lintian"
    # Clean at pedantic level too; no tag is overridden.
    lintian --fail-on warning,error "$OUT"/deb/qsf_"$VERSION"_*.changes \
        || die "lintian found problems"
    ls "$OUT"/deb/*.deb
}

build_rpm() {
    local top=$OUT/rpm
    rm -rf "$top"
    mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
    stage "$top/stage/qsf-$VERSION"
    tar -C "$top/stage" -czf "$top/SOURCES/qsf-$VERSION.tar.gz" "qsf-$VERSION"
    say "rpmbuild"
    # --nodeps: this Debian machine's rpm database knows none of Fedora's packages.
    PATH=$SYSTEM_PATH rpmbuild -bb --nodeps --define "_topdir $top" --define "version $VERSION" \
        "$REPO/packaging/qsf.spec" >"$top/build.log" 2>&1 \
        || { tail -40 "$top/build.log" >&2; die "rpmbuild failed ($top/build.log)"; }
    ls "$top"/RPMS/noarch/*.rpm
}

case ${1:-} in
    deb) build_deb ;;
    rpm) build_rpm ;;
    *) die "usage: $0 deb|rpm" ;;
esac
