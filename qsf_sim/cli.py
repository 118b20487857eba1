"""`qsf-sim`: build a simulated Qubes machine, run its qrexec daemon, act inside a qube."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from qsf_sim import daemon, demo, prompt, tree
from qsf_sim.layout import LayoutError, Qube, SimConfig, qube_socket
from qsf_sim.runas import remove_user
from qsf_sim.sim import Sim

DESCRIPTION = """\
A stand-in for Qubes OS qrexec on one Linux machine (tests and demos only).

Each simulated qube has a directory under ROOT/qubes/NAME laid out as in a qube
(home/user, etc/qubes-rpc, usr/local/etc/qubes-rpc, bin/qrexec-client-vm), its own
Unix user (qsfsim-NAME, created when run as root) and its own socket ROOT/sockets/NAME.
The daemon plays dom0's qrexec: it evaluates dom0's policy (ROOT/qubes/dom0/etc/qubes/
policy.d and .../run/qubes/policy.d) as Qubes does and runs the target's service as
the target's user. A qube calls services with its own bin/qrexec-client-vm.

  qsf-sim setup  --root ROOT --qube work --qube server     build the root and the users
  qsf-sim daemon --root ROOT                               serve until SIGTERM / Ctrl-C
  qsf-sim run    --root ROOT work -- qrexec-client-vm server some.Service
  qsf-sim answer --root ROOT "allow server"                scripted answer to an `ask`
  qsf-sim answer-folder --root ROOT "once ro"              scripted answer to qsf's dialog
  qsf-sim demo [--unattended] [--keep]                     the demo (python -m qsf_sim.demo)
"""

parser = argparse.ArgumentParser(prog="qsf-sim", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
commands = parser.add_subparsers(dest="command", required=True)

setup_parser = commands.add_parser("setup", help="build ROOT: qube trees, users, installed files")
setup_parser.add_argument("--root", type=Path, required=True)
setup_parser.add_argument(
    "--qube", action="append", default=[], metavar="NAME[:TYPE[:TAG,...]]",
    help="a qube (repeatable); TYPE AppVM (default), DispVM (default for disp<digits>), "
         "TemplateVM or StandaloneVM; dom0 is always there")
setup_parser.add_argument("--no-project-files", action="store_true",
                          help="do not install this project's qubes-rpc/ and policy/ files")
setup_parser.add_argument("--private-home", action="store_true",
                          help="run services in a mount namespace where home is /home/user")
setup_parser.add_argument("--dom0-policy-readonly", action="store_true",
                          help="dom0's policy directories are not writable by dom0's user")
setup_parser.add_argument("--prompt", choices=("scripted", "terminal"), default="scripted",
                          help="answers to policy `ask` lines: scripted (qsf-sim answer) "
                               "or from the daemon's terminal")
setup_parser.add_argument("--qsf-prompt", choices=("scripted", "terminal", "project"),
                          default="scripted",
                          help="qsf's dom0 dialog: scripted (qsf-sim answer-folder), the "
                               "daemon's terminal, or the project's service file unchanged")

daemon_parser = commands.add_parser("daemon", help="run dom0's qrexec for ROOT")
daemon_parser.add_argument("--root", type=Path, required=True)
daemon_parser.add_argument("--ready-fd", type=int, help="write 'ready' to this fd once listening")

run_parser = commands.add_parser("run", help="run a command in a qube, as its user")
run_parser.add_argument("--root", type=Path, required=True)
run_parser.add_argument("qube")
run_parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

answer_parser = commands.add_parser("answer", help="queue scripted answers for `ask` prompts")
answer_parser.add_argument("--root", type=Path, required=True)
answer_parser.add_argument("answers", nargs="+", metavar="'allow [TARGET]'|deny")

folder_parser = commands.add_parser("answer-folder",
                                    help="queue scripted answers for qsf's dom0 dialog")
folder_parser.add_argument("--root", type=Path, required=True)
folder_parser.add_argument("answers", nargs="+", metavar="once|always|deny|never|block [ro|rw]")

socket_parser = commands.add_parser("socket", help="print the socket path of a qube")
socket_parser.add_argument("--root", type=Path, required=True)
socket_parser.add_argument("qube")

commands.add_parser("demo", add_help=False,
                    help="share a sample folder from work to personal, step by step "
                         "(qsf-sim demo --help)")

remove_parser = commands.add_parser("remove-users", help="delete the Unix users of ROOT's qubes")
remove_parser.add_argument("--root", type=Path, required=True)


def _setup(args: argparse.Namespace) -> int:
    qubes = [Qube.parse(text) for text in args.qube]
    sim = Sim(args.root, qubes, project_files=not args.no_project_files,
              private_home=args.private_home, dom0_policy_writable=not args.dom0_policy_readonly,
              prompt_kind=args.prompt, qsf_prompt=args.qsf_prompt)
    tree.build(sim.root, sim.config, project_files=sim.project_files)
    print(f"simulated qubes under {sim.root}: " + ", ".join(q.name for q in sim.config.qubes))
    return 0


def _sim(root: Path) -> Sim:
    """A handle on an existing root (its daemon is not started by this)."""
    config = SimConfig.load(root)
    return Sim(root, config.qubes, private_home=config.private_home, python=config.python,
               prompt_kind=config.prompt, qsf_prompt=config.qsf_prompt)


def _run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("run: a command is required")
    return _sim(args.root).popen(args.qube, argv).wait()


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["demo"]:  # its options are the demo's own (argparse would take them)
        return demo.main(words[1:])
    args = parser.parse_args(words)
    try:
        if args.command == "setup":
            return _setup(args)
        if args.command == "daemon":
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s qsf-sim %(levelname)s %(message)s")
            return daemon.run(args.root.absolute(), args.ready_fd)
        if args.command == "run":
            return _run(args)
        if args.command == "answer":
            prompt.push_answers(args.root, args.answers)
            return 0
        if args.command == "answer-folder":
            _sim(args.root).answer_folder(*args.answers)
            return 0
        if args.command == "socket":
            print(qube_socket(args.root.absolute(), args.qube))
            return 0
        if args.command == "remove-users":
            for qube in SimConfig.load(args.root).qubes:
                remove_user(qube.name)
            return 0
    except (LayoutError, ValueError, OSError) as error:
        print(f"qsf-sim: {error}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
