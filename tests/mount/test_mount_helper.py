"""mount.qvm: mount(8)'s helper calling convention, option translation, exit codes."""

from __future__ import annotations

import pytest

from qsf_mount import helper


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], ["--backend=auto"]),
        (["backend=fuse,ro"], ["--backend=fuse", "--read-only"]),
        (["ro", "rw"], ["--backend=auto"]),  # the last one wins, as in mount(8)
        # what mount(8) passes for an fstab line `noauto,user,backend=fuse`
        (["rw,noexec,nosuid,nodev,backend=fuse,user"], ["--backend=fuse", "-o", "noexec"]),
        (["defaults,auto,users,nouser,owner,group,user=alice,_netdev,nofail,comment=x,"
          "x-systemd.automount,x-gvfs-show"], ["--backend=auto"]),
        (["backend=kernel,cache=loose", "msize=65536,,noatime"],
         ["--backend=kernel", "-o", "cache=loose,msize=65536,noatime"]),
        (["suid"], ["--backend=auto", "-o", "suid"]),  # qvm-mount-folder's backends refuse it
    ],
)
def test_options_become_qvm_mount_folder_arguments(options: list[str],
                                                   expected: list[str]) -> None:
    argv = helper.command("work:/home/user/Shared", "/mnt/w", options)
    assert argv == [*expected, "--", "work", "/home/user/Shared", "/mnt/w"]


@pytest.mark.parametrize("spec", ["work", "work:relative", ":/x", "work/x"])
def test_a_source_that_is_not_server_colon_folder(spec: str) -> None:
    if spec == ":/x":  # an empty qube name: qvm-mount-folder's check (usage error)
        assert helper.main(["-f", spec, "/mnt"]) == 1
        return
    with pytest.raises(ValueError, match="SERVER:/FOLDER"):
        helper.command(spec, "/mnt", [])


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="auto, kernel or fuse"):
        helper.command("work:/x", "/mnt", ["backend=nfs"])


@pytest.mark.parametrize(
    ("code", "status"),
    [(0, 0), (1, 32), (2, 1), (3, 32), (4, 32), (5, 32), (6, 32), (7, 32), (8, 32), (99, 32)],
)
def test_exit_codes_become_mounts(code: int, status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return code

    monkeypatch.setattr(helper.cli, "main", fake_main)
    assert helper.main(["work:/srv/x", "/mnt/x", "-n", "-s", "-o", "rw,backend=fuse"]) == status
    assert calls == [["--backend=fuse", "--", "work", "/srv/x", "/mnt/x"]]


def test_fake_verbose_and_usage(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(helper.cli, "main", lambda argv: pytest.fail("mounted"))
    assert helper.main(["-f", "-v", "work:/a b", "/mnt", "-t", "qvm"]) == 0
    assert capsys.readouterr().err == (
        "mount.qvm: qvm-mount-folder --backend=auto -- work '/a b' /mnt\n")
    assert helper.main(["-f", "dom 0:/x", "/mnt"]) == 1  # qvm-mount-folder's usage check
    assert "not a qube name" in capsys.readouterr().err
    assert helper.main(["work:/x"]) == 1  # argparse: MOUNTPOINT missing
    assert helper.main(["-N", "/proc/1/ns/mnt", "work:/x", "/mnt"]) == 1
    assert "not supported" in capsys.readouterr().err
    assert helper.main(["--help"]) == 0
    assert "backend=auto|kernel|fuse" in capsys.readouterr().out
