"""The Debian packages, installed with apt into fresh Debian 12 and 13 roots
and used there: apt resolves every dependency from Debian (no venv, no pip), a
folder is served by qsf-server and mounted by qsf-fuse over real FUSE, the
commands and their man pages work, and the project's own unit and FUSE tests
pass against the installed package and the distribution's libraries.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import roots
import support

pytestmark = [pytest.mark.packages, pytest.mark.timeout(1800)]

# What the project's tests need from the checkout besides the installed package:
# the test tree, the simulator (test support, never packaged), the files the
# tests compare with the packaged ones, and pytest's configuration.
TEST_FILES = ("tests", "qsf_sim", "qubes-rpc", "policy", "packaging", "fuzz", "pyproject.toml")
# The areas that use trio, pyfuse3 and construct run in every root; the
# stdlib-only ones (dom0, the simulator) where the Python differs from the
# venv's 3.11: Debian 13's 3.13.
LIBRARY_AREAS = ("tests/p9", "tests/server", "tests/mount", "tests/fuse")
STDLIB_AREAS = ("tests/dom0", "tests/sim")
NOT_HERE = (
    # atheris (the coverage-guided fuzzer) is on PyPI only, not a distribution library.
    "tests/p9/test_p9_fuzz.py::test_atheris_run",
    # The long FUSE load runs stay in the venv's suite: stress-ng runs here once,
    # against qsf-server as the qube's user (a minute a root, not four).
    "tests/fuse/test_fuse_stress.py::test_stress_ng_filesystem_stressors[diod]",
    "tests/fuse/test_fuse_stress.py::test_stress_ng_filesystem_stressors[qsf-few-fids]",
    "tests/fuse/test_fuse_conformance.py::test_ten_thousand_entries",
    # systemd-analyze (the root has no systemd) and a desktop's notification
    # server: checks of the unit files and of the desktop, not of the libraries.
    "tests/mount/test_mount_units.py",
    "tests/server/test_server_notify.py",
)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("deb-build")
    support.need_program("dpkg-buildpackage")
    support.need_program("lintian")
    roots.run(["bash", str(support.REPO / "scripts" / "build_packages.sh"), "deb"],
              env={**os.environ, "QSF_PKG_OUT": str(out),
                   "QSF_VENV": str(support.VENV_BIN.parent)})
    found = sorted((out / "deb").glob("*.deb"))
    assert sorted(p.name.split("_")[0] for p in found) == ["qsf", "qsf-dom0"], found
    return found


@pytest.fixture(scope="module", params=roots.SUITES, ids=lambda s: s.name)
def root(request: pytest.FixtureRequest, debs: list[Path],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[roots.Root]:
    suite: roots.Suite = request.param
    support.need_fuse()
    root = roots.Root(suite, tmp_path_factory.mktemp(suite.name))
    try:
        (root.path / "srv" / "debs").mkdir(parents=True)
        for deb in debs:
            shutil.copy(deb, root.path / "srv" / "debs")
        root.sh("apt-get -q update\n"
                "DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends "
                "install /srv/debs/*.deb", timeout=900)
        yield root
    finally:
        root.remove()


def test_dependencies_come_from_debian(root: roots.Root) -> None:
    out = root.sh("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' "
                  "qsf qsf-dom0 python3-trio python3-pyfuse3 python3-construct fuse3\n"
                  "python3 -c 'import qsf_p9, qsf_fuse.cli, qsf_dom0, trio, pyfuse3, construct; "
                  "print(qsf_p9.__file__, trio.__file__, pyfuse3.__file__)'").stdout
    lines = out.splitlines()
    assert all(line.endswith("install ok installed") for line in lines[:6]), out
    # Debian's own files, nothing from /usr/local or a venv.
    assert all(path.startswith("/usr/lib/python3/dist-packages/")
               for path in lines[6].split()), out


def test_serve_and_mount_with_fuse(root: roots.Root) -> None:
    out = root.sh("""
mkdir -p /srv/share /mnt/share
printf 'from the server\\n' >/srv/share/hello.txt
qsf-fuse --exec 'qsf-server /srv/share' /mnt/share
trap 'fusermount3 -u /mnt/share' EXIT
awk '$2 == "/mnt/share" {print $3}' /proc/self/mounts
cat /mnt/share/hello.txt
printf 'from the client\\n' >/mnt/share/new.txt
mkdir /mnt/share/sub && mv /mnt/share/new.txt /mnt/share/sub/
ls /mnt/share
cat /srv/share/sub/new.txt
""").stdout
    assert out.splitlines() == ["fuse.qsf", "from the server", "hello.txt", "sub",
                                "from the client"], out


def test_help_and_man_page(root: roots.Root) -> None:
    out = root.sh("qvm-mount-folder --help\n"
                  "echo ----\n"
                  "MANPAGER=cat MANWIDTH=80 man qvm-mount-folder\n"
                  "man -w qsf-server qsf-fuse qvm-mount mount.qvm qvm-folder-share\n"
                  "/sbin/mount.qvm --help | head -n 1").stdout
    help_text, man_text = out.split("----\n")
    man_text = " ".join(man_text.split())
    assert help_text.startswith("usage: qvm-mount-folder"), help_text
    assert "qvm-mount-folder - mount FOLDER of qube SERVER" in man_text, man_text
    assert "exit status" in man_text and "--backend" in man_text, man_text
    assert "/usr/share/man/man1/qsf-fuse.1.gz" in man_text, man_text
    assert "/usr/share/man/man8/mount.qvm.8.gz" in man_text, man_text
    assert "/usr/share/man/man1/qvm-folder-share.1.gz" in man_text, man_text
    assert "usage: mount.qvm" in man_text, man_text


def test_packaged_files(root: roots.Root) -> None:
    out = root.sh("stat -c '%a %n' /etc/qubes-rpc/qsf.ConnectToFolder "
                  "/etc/qubes-rpc/qsf.AuthorizeFolderAccess "
                  "/etc/qubes-rpc/qsf.QueryFolderAuthorization "
                  "/etc/qubes/policy.d/80-qsf.policy /usr/lib/tmpfiles.d/qsf-dom0.conf "
                  "/usr/sbin/mount.qvm /usr/lib/systemd/user/qsf-mount-persistent.service "
                  "/etc/xdg/autostart/qsf-ask-agent.desktop\n"
                  "readlink /etc/qubes-rpc/qsf.AskFolderAccess\n"
                  "cat /var/lib/dpkg/info/qsf-dom0.conffiles").stdout
    assert out.splitlines() == [
        "755 /etc/qubes-rpc/qsf.ConnectToFolder",
        "755 /etc/qubes-rpc/qsf.AuthorizeFolderAccess",
        "755 /etc/qubes-rpc/qsf.QueryFolderAuthorization",
        "644 /etc/qubes/policy.d/80-qsf.policy",
        "644 /usr/lib/tmpfiles.d/qsf-dom0.conf",
        "755 /usr/sbin/mount.qvm",
        "644 /usr/lib/systemd/user/qsf-mount-persistent.service",
        "644 /etc/xdg/autostart/qsf-ask-agent.desktop",
        "/var/run/qubes/qsf-ask-agent.sock",
        # Debian: every file under /etc is a conffile, the services too.
        "/etc/qubes-rpc/qsf.AuthorizeFolderAccess",
        "/etc/qubes-rpc/qsf.QueryFolderAuthorization",
        "/etc/qubes/policy.d/80-qsf.policy",
        "/etc/xdg/autostart/qsf-ask-agent.desktop",
    ], out


def test_project_tests_pass_on_the_installed_package(root: roots.Root) -> None:
    tree = root.path / "srv" / "qsf-tests"
    tree.mkdir()
    for name in TEST_FILES:
        source = support.REPO / name
        if source.is_dir():
            # symlinks=True: packaging/ holds a link to the agent's socket, absent here.
            shutil.copytree(source, tree / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        else:
            shutil.copy(source, tree / name)
    plugins = []
    if "python3-pytest-trio" not in root.suite.extra_tools:
        # Not packaged by this suite: pytest-trio's pure-Python plugin from the venv.
        shutil.copytree(Path(pytest_trio_dir()), tree / "vendor" / "pytest_trio")
        plugins = ["-p", "pytest_trio.plugin"]
    site = root.path / "usr" / "local" / "lib" / f"python{root.suite.python}" / "dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    (site / "qsf-tests.pth").write_text("/srv/qsf-tests\n/srv/qsf-tests/vendor\n")
    sim = root.path / "usr" / "bin" / "qsf-sim"   # the simulator's command, test support too
    sim.write_text("#!/bin/sh\nexec python3 -m qsf_sim.cli \"$@\"\n")
    sim.chmod(0o755)
    deselect = [f"--deselect={test}" for test in NOT_HERE]
    areas = LIBRARY_AREAS + (STDLIB_AREAS if root.suite.python != "3.11" else ())
    argv = ["python3", "-m", "pytest", *plugins, "-q", "-m", "not slow", "-p", "no:cacheprovider",
            "--durations=5", *deselect, *areas]
    result = root.sh(
        # The package under test is Debian's install, not the copied tree.
        "cd /srv/qsf-tests\n"
        "python3 -c 'import qsf_p9, qsf_sim; "
        "assert qsf_p9.__file__.startswith(\"/usr/lib/python3/dist-packages/\"), qsf_p9.__file__'\n"
        + "rc=0; " + shlex.join(argv) + " >/tmp/pytest.log 2>&1 || rc=$?\n"
        "tail -60 /tmp/pytest.log; exit $rc",
        timeout=1500, env={"CI": "true"})
    print(result.stdout)


def pytest_trio_dir() -> str:
    import pytest_trio
    return str(Path(pytest_trio.__file__).parent)
