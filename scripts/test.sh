#!/usr/bin/env bash
# The whole test suite: install (scripts/install.sh), then pytest, ruff, mypy.
# Exits non-zero if any of them fails. Arguments go to pytest
# (default: the whole suite without the `slow` marker). CI=true selects the
# fixed-seed hypothesis profile and turns missing dependencies into failures.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${QSF_VENV:-/opt/qsf-venv}
QUBE_UID=1000
QUBE_GID=1000

say() { printf 'test.sh: %s\n' "$*" >&2; }

bash "$REPO/scripts/install.sh" || { say "FAIL: scripts/install.sh failed"; exit 1; }

# The unprivileged tests run the checkout's code and the venv as uid 1000.
check_readable_by_qube_user() {
    ((EUID == 0)) || return 0
    # From / down, so that the first folder named is the one to fix.
    local dir="" part
    local -a parts
    IFS=/ read -ra parts <<<"${REPO#/}"
    for part in "${parts[@]}"; do
        dir=$dir/$part
        if ! setpriv --reuid=$QUBE_UID --regid=$QUBE_GID --clear-groups -- test -x "$dir"; then
            say "FAIL: uid $QUBE_UID cannot enter $dir; the checkout must be readable by" \
                "uid $QUBE_UID for the unprivileged tests: clone it elsewhere (e.g. /srv) or" \
                "chmod o+x $dir"
            return 1
        fi
    done
    if ! setpriv --reuid=$QUBE_UID --regid=$QUBE_GID --clear-groups -- \
        "$VENV/bin/python" -c 'import qsf_p9.messages' 2>/dev/null; then
        say "FAIL: uid $QUBE_UID cannot run $VENV/bin/python or import the project from $REPO"
        return 1
    fi
}
check_readable_by_qube_user || exit 1

cd "$REPO" || exit 1
results=()
failed=0

run() {
    local name=$1
    shift
    say "running $name: $*"
    "$@"
    local rc=$?
    if [[ $name == pytest && $rc == 5 ]]; then
        say "pytest collected no tests"
    fi
    if ((rc == 0)); then
        results+=("$name ok")
    else
        results+=("$name FAILED (exit $rc)")
        failed=1
    fi
}

default_run=0
if (($# == 0)); then
    default_run=1
    set -- -m "not slow and not packages"
fi
junit=$(mktemp --suffix=.xml)
junit_packages=$(mktemp --suffix=.xml)
trap 'rm -f "$junit" "$junit_packages"' EXIT
run pytest "$VENV/bin/pytest" --junitxml="$junit" "$@"
# The packages (make test-packages) as their own step: they build the .deb and
# the RPMs and install them in clean roots (several minutes, mostly apt).
if ((default_run)); then
    run packages "$VENV/bin/pytest" --junitxml="$junit_packages" -m packages tests/packages
fi
run ruff "$VENV/bin/ruff" check .
run mypy "$VENV/bin/mypy"
# bench/ is not a package of the distribution; check the benchmarks too (the
# guest benchmark imports the rig from tests/guest, checked with it silenced).
run mypy-bench "$VENV/bin/mypy" --strict bench/__init__.py bench/ninep_load.py bench/server.py \
    bench/fuse_bench.py bench/fuse_cpu.py bench/codec_micro.py
run mypy-packaging "$VENV/bin/mypy" --strict packaging/manpages.py

summary=$(IFS=,; printf '%s' "${results[*]}")
if ((failed)); then
    say "FAIL: ${summary//,/, }"
else
    say "PASS: ${summary//,/, }"
fi
# pytest's counts as the last line, in the plain form CI reads.
"$VENV/bin/python" - "$junit" "$junit_packages" <<'PY' || true
import sys
import xml.etree.ElementTree as ET

suites = []
for name in sys.argv[1:]:
    try:
        root = ET.parse(name).getroot()
    except (OSError, ET.ParseError):
        continue
    suites += [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
count = {key: sum(int(s.get(key, 0)) for s in suites)
         for key in ("tests", "failures", "errors", "skipped")}
failed = count["failures"] + count["errors"]
passed = count["tests"] - failed - count["skipped"]
print(f"pytest: {passed} passed, {failed} failed, {count['skipped']} skipped")
PY
exit "$failed"
