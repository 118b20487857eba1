"""The RPMs from packaging/qsf.spec, built with Debian's rpm and checked as
files: contents and modes, requirements, scriptlets, and placement once
installed with `rpm --root` into an empty root (--nodeps: none of Fedora's
packages are there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import roots
import support

pytestmark = [pytest.mark.packages, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rpm-build")
    support.need_program("rpmbuild")
    roots.run(["bash", str(support.REPO / "scripts" / "build_packages.sh"), "rpm"],
              env={**os.environ, "QSF_PKG_OUT": str(out),
                   "QSF_VENV": str(support.VENV_BIN.parent)})
    found = {rpm_query(p, "%{NAME}"): p for p in (out / "rpm" / "RPMS" / "noarch").glob("*.rpm")}
    assert sorted(found) == ["qsf", "qsf-dom0"], found
    return found


def rpm_query(package: Path, *args: str) -> str:
    rpm = support.need_program("rpm")
    if len(args) == 1 and args[0].startswith(("%", "[")):
        args = ("--qf", args[0])
    return roots.run([rpm, "-qp", *args, str(package)]).stdout


def files(package: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode, file flags: c config, n noreplace, g ghost, d doc)."""
    out = rpm_query(package, "[%{FILEMODES:perms}\t%{FILEFLAGS:fflags}\t%{FILENAMES}\n]")
    listed = {}
    for line in out.splitlines():
        mode, flags, path = line.split("\t")
        listed[path] = (mode, flags)
    return listed


def test_template_package_contents(rpms: dict[str, Path]) -> None:
    listed = files(rpms["qsf"])
    assert listed["/etc/qubes-rpc/qsf.ConnectToFolder"] == ("-rwxr-xr-x", "")
    for command in ("qsf-server", "qsf-fuse", "qvm-mount-folder", "qvm-mount"):
        assert listed[f"/usr/bin/{command}"] == ("-rwxr-xr-x", ""), command
        assert any(p.startswith(f"/usr/share/man/man1/{command}.1") for p in listed), command
    # mount(8) finds its helper only in /sbin (/usr/sbin).
    assert listed["/usr/sbin/mount.qvm"] == ("-rwxr-xr-x", "")
    assert any(p.startswith("/usr/share/man/man8/mount.qvm.8") for p in listed)
    assert listed["/usr/lib/systemd/user/qsf-mount-persistent.service"] == ("-rw-r--r--", "")
    assert listed["/usr/lib/systemd/user-preset/80-qsf.preset"] == ("-rw-r--r--", "")
    packages = {Path(p).parts[5] for p in listed if "/site-packages/qsf" in p}
    assert packages == {"qsf_p9", "qsf_server", "qsf_fuse", "qsf_kmount", "qsf_mount",
                        "qsf-0.1.0.dist-info"}, packages
    assert not any("/usr/local/" in p or "qsf_sim" in p or "qsf_dom0" in p for p in listed)


def test_dom0_package_contents(rpms: dict[str, Path]) -> None:
    listed = files(rpms["qsf-dom0"])
    assert listed["/etc/qubes-rpc/qsf.AuthorizeFolderAccess"] == ("-rwxr-xr-x", "")
    assert listed["/etc/qubes-rpc/qsf.QueryFolderAuthorization"] == ("-rwxr-xr-x", "")
    # The admin's policy: config(noreplace); the generated grants: a ghost, never payload.
    assert listed["/etc/qubes/policy.d/80-qsf.policy"] == ("-rw-r--r--", "cn")
    assert listed["/etc/qubes/policy.d/79-qsf-grants.policy"][1] == "g"
    assert listed["/usr/lib/tmpfiles.d/qsf-dom0.conf"] == ("-rw-r--r--", "")
    # The dialog's socket service is a link to the agent's socket.
    assert listed["/etc/qubes-rpc/qsf.AskFolderAccess"][0].startswith("l")
    assert listed["/etc/xdg/autostart/qsf-ask-agent.desktop"] == ("-rw-r--r--", "")
    assert listed["/usr/share/applications/qvm-folder-share-manager.desktop"] == \
        ("-rw-r--r--", "")
    for command in ("qvm-folder-share", "qvm-folder-share-manager", "qsf-ask-agent"):
        assert listed[f"/usr/bin/{command}"] == ("-rwxr-xr-x", ""), command
        assert any(p.startswith(f"/usr/share/man/man1/{command}.1") for p in listed), command
    packages = {Path(p).parts[5] for p in listed if "/site-packages/qsf" in p}
    assert packages == {"qsf_dom0", "qsf_ask"}, packages


def test_requirements(rpms: dict[str, Path]) -> None:
    template = set(rpm_query(rpms["qsf"], "--requires").splitlines())
    assert {"fuse3", "python3 >= 3.11", "python3-trio >= 0.22", "python3-pyfuse3 >= 3.2.1",
            "python3-construct >= 2.10.68"} <= template, template
    dom0 = set(rpm_query(rpms["qsf-dom0"], "--requires").splitlines())
    assert "python3 >= 3.11" in dom0 and not any("trio" in r or "fuse" in r for r in dom0), dom0
    for package in rpms.values():
        assert rpm_query(package, "%{ARCH}") == "noarch"


def test_scriptlets_write_no_policy(rpms: dict[str, Path]) -> None:
    # qsf's are the systemd user-preset macros (":" where rpm has no systemd macros).
    template = rpm_query(rpms["qsf"], "--scripts")
    assert "policy" not in template, template
    scripts = rpm_query(rpms["qsf-dom0"], "--scripts")
    assert "systemd-tmpfiles --create qsf-dom0.conf" in scripts, scripts
    code = [line for line in scripts.splitlines() if line and not line.lstrip().startswith("#")]
    assert not any("policy" in line for line in code), scripts


def test_install_into_an_empty_root(rpms: dict[str, Path], tmp_path: Path) -> None:
    rpm = support.need_program("rpm")
    root = tmp_path / "root"
    root.mkdir()
    # --noscripts: the root has no /bin/sh to run them; they are checked above.
    roots.run([rpm, "--root", str(root), "--initdb"])
    roots.run([rpm, "--root", str(root), "-i", "--nodeps", "--noscripts",
               *map(str, rpms.values())])
    installed = roots.run([rpm, "--root", str(root), "-qa", "--qf", "%{NAME}\n"]).stdout
    assert sorted(installed.split()) == ["qsf", "qsf-dom0"]
    site = next((root / "usr" / "lib").glob("python3.*/site-packages"))
    for path in ("etc/qubes-rpc/qsf.ConnectToFolder", "etc/qubes-rpc/qsf.AuthorizeFolderAccess",
                 "usr/bin/qvm-mount-folder", "usr/bin/qsf-server", "usr/bin/qsf-fuse"):
        assert os.access(root / path, os.X_OK), path
    assert (root / "etc/qubes/policy.d/80-qsf.policy").read_text() == \
        (support.REPO / "policy" / "80-qsf.policy").read_text()
    assert not (root / "etc/qubes/policy.d/79-qsf-grants.policy").exists()
    assert (root / "usr/lib/tmpfiles.d/qsf-dom0.conf").read_text().count("d /run/qsf 0700") == 1
    assert (site / "qsf_mount" / "cli.py").is_file() and not (site / "qsf_sim").exists()
    script = (root / "usr/bin/qvm-mount-folder").read_text()
    assert script.startswith("#!/usr/bin/python3"), script
    # The ghost stays out of the way of qsf_dom0 and is removed with the package.
    (root / "etc/qubes/policy.d/79-qsf-grants.policy").write_text("# generated\n")
    roots.run([rpm, "--root", str(root), "-e", "--nodeps", "--noscripts", "qsf-dom0"])
    assert not (root / "etc/qubes/policy.d/79-qsf-grants.policy").exists()
    assert not (root / "usr/lib/tmpfiles.d/qsf-dom0.conf").exists()
