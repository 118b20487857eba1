"""mount.qvm: `mount -t qvm SERVER:/FOLDER MOUNTPOINT` and fstab lines, through mount(8).

mount(8) runs /sbin/mount.qvm (/usr/sbin on merged-/usr systems) as

    mount.qvm SPEC DIR [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]

as root, or for an fstab line with `user`/`users` as the calling user (mount(8)
drops its privileges before it runs a helper). The options become
qvm-mount-folder's, which does the mount; its exit code becomes mount(8)'s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Final

from qsf_mount import cli
from qsf_mount.request import BACKENDS, EXIT_OK, EXIT_USAGE

# mount(8)'s RETURN CODES.
MOUNT_OK: Final = 0
MOUNT_USAGE: Final = 1  # incorrect invocation or permissions
MOUNT_FAILURE: Final = 32  # mount failure
# Options of fstab and mount(8) that mean nothing to qvm-mount-folder, and the
# flags both backends always set (nosuid, nodev).
DROPPED: Final = frozenset({"defaults", "auto", "noauto", "user", "users", "nouser", "owner",
                            "group", "_netdev", "nofail", "rw", "nosuid", "nodev"})
DROPPED_NAMES: Final = frozenset({"user", "comment"})  # user=NAME, comment=TEXT
# mount(8) runs helpers without PATH (and HOME): qrexec-client-vm is found here.
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

parser = argparse.ArgumentParser(
    prog="mount.qvm",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description="""\
The mount(8) helper for file system type qvm: mounts FOLDER of qube SERVER at
MOUNTPOINT with qvm-mount-folder. mount(8) runs it; it is not meant to be run
by hand.""",
    epilog="""\
options (-o, comma-separated):
  backend=auto|kernel|fuse   qvm-mount-folder --backend (default auto)
  ro                         qvm-mount-folder --read-only (rw, the default, undoes it)
  defaults, auto, noauto, user, users, nouser, owner, group, user=NAME,
  _netdev, nofail, comment=..., x-...
                             fstab's own: ignored
  nosuid, nodev              ignored: always set for a share
  anything else              passed to qvm-mount-folder -o (see its --help)

exit status (mount(8)'s):
  0  mounted
  1  incorrect invocation (qvm-mount-folder's usage error, exit 2)
  32 mount failure (qvm-mount-folder's exits 1 and 3 to 8: denied, refused by
     policy, no such folder, bad mount point, server unreachable, no backend);
     its message says which

examples:
  mount -t qvm work:/home/user/Shared /home/user/work -o backend=fuse,ro
  /etc/fstab:  work:/home/user/Shared /home/user/work qvm noauto,user,backend=fuse 0 0
               then, as the user: mount /home/user/work""",
)
parser.add_argument("spec", metavar="SERVER:/FOLDER", help="the qube and its folder")
parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory in this qube")
parser.add_argument("-s", dest="sloppy", action="store_true", help="sloppy: accepted")
parser.add_argument("-f", dest="fake", action="store_true",
                    help="fake: check the arguments, mount nothing")
parser.add_argument("-n", dest="no_mtab", action="store_true",
                    help="do not write /etc/mtab: accepted (qsf never writes it)")
parser.add_argument("-v", dest="verbose", action="store_true",
                    help="print the qvm-mount-folder command line")
parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                    help="mount options (below)")
parser.add_argument("-N", dest="namespace", metavar="NAMESPACE",
                    help="another mount namespace: not supported")
parser.add_argument("-t", dest="type", metavar="TYPE", help="qvm (accepted)")


def exit_status(code: int) -> int:
    """mount(8)'s return code for qvm-mount-folder's exit code."""
    if code == EXIT_OK:
        return MOUNT_OK
    return MOUNT_USAGE if code == EXIT_USAGE else MOUNT_FAILURE


def command(spec: str, mountpoint: str, options: Sequence[str]) -> list[str]:
    """qvm-mount-folder's arguments for a mount.qvm call; ValueError when malformed."""
    server, colon, folder = spec.partition(":")
    if not colon or not folder.startswith("/"):
        raise ValueError(f"{spec!r}: the source is SERVER:/FOLDER")
    backend, read_only, passed = "auto", False, []
    for option in (item for text in options for item in text.split(",") if item):
        name, has_value, value = option.partition("=")
        if option in DROPPED or name.startswith("x-") or (has_value and name in DROPPED_NAMES):
            if option == "rw":
                read_only = False
            continue
        if option == "ro":
            read_only = True
        elif name == "backend" and has_value:
            if value not in BACKENDS:
                raise ValueError(f"backend={value}: auto, kernel or fuse")
            backend = value
        else:
            passed.append(option)
    argv = [f"--backend={backend}"]
    if read_only:
        argv.append("--read-only")
    if passed:
        argv += ["-o", ",".join(passed)]
    return [*argv, "--", server, folder, mountpoint]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2)
        return MOUNT_OK if done.code in (0, None) else MOUNT_USAGE
    if args.namespace is not None:
        print("mount.qvm: -N (another mount namespace) is not supported", file=sys.stderr)
        return MOUNT_USAGE
    try:
        arguments = command(args.spec, args.mountpoint, args.options)
    except ValueError as error:
        print(f"mount.qvm: {error}", file=sys.stderr)
        return MOUNT_USAGE
    if not os.environ.get("PATH"):
        os.environ["PATH"] = DEFAULT_PATH
    if args.verbose:
        print(f"mount.qvm: qvm-mount-folder {shlex.join(arguments)}", file=sys.stderr)
    try:
        if args.fake:
            cli.parse(arguments)
            return MOUNT_OK
        return exit_status(cli.main(arguments))
    except SystemExit as done:  # qvm-mount-folder's usage error, already printed
        return exit_status(done.code if isinstance(done.code, int) else EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
