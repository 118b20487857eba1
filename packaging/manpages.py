"""Write a man page for every qsf command, from its argparse parser.

The commands are pyproject's console scripts (each "module:function" whose
module defines a module-level `parser`) minus NOT_INSTALLED, plus EXTRA for
commands that are not console scripts. A new command gets its page by being a
console script, or by one line in EXTRA. The pages come from argparse-manpage 4
or newer (PyPI, Debian 13's or Fedora's python3-argparse-manpage; Debian 12's
1.2 drops the epilog and the NAME line), run as a program. `make deb` and
`make rpm` write them into the source tree they package (man/), so the package
builds install pages made here and need no generator themselves.

    python3 packaging/manpages.py OUTDIR     # writes OUTDIR/NAME.1 (NAME.8: SECTIONS)
    python3 packaging/manpages.py --list     # prints NAME MODULE, one a line
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Console scripts that are not installed by the packages (the simulator).
NOT_INSTALLED = {"qsf-sim"}
# Commands that are not console scripts: name -> module with a `parser`.
EXTRA: dict[str, str] = {}
# Pages outside section 1: mount(8)'s helper belongs with the admin commands.
SECTIONS = {"mount.qvm": "8"}
# Another name of a command: a page that sources the command's own.
ALIASES = {"qvm-mount": "qvm-mount-folder"}

URL = "https://github.com/qsf-project/qsf"


def project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def commands() -> dict[str, str]:
    """Command name -> module that defines its `parser`, sorted by name."""
    found = {name: target.split(":")[0] for name, target in project()["scripts"].items()
             if name not in NOT_INSTALLED and name not in ALIASES}
    found.update(EXTRA)
    return dict(sorted(found.items()))


def generator() -> str:
    """argparse-manpage >= 4: the one beside this interpreter (a venv), else PATH's."""
    beside = Path(sys.executable).parent / "argparse-manpage"
    program = str(beside) if beside.exists() else shutil.which("argparse-manpage")
    if program is None:
        sys.exit("manpages.py: argparse-manpage is missing (pip install 'qsf[test]')")
    usage = subprocess.run([program, "--help"], capture_output=True, text=True).stdout
    if "--description" not in usage:
        sys.exit(f"manpages.py: {program} is older than 4.0 (no --description)")
    return program


def summary(module: str) -> str:
    """The NAME line's text: the first sentence of the parser's description."""
    parser = importlib.import_module(module).parser
    first = (parser.description or "").replace("\n", " ").split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def write_page(program: str, name: str, module: str, version: str, outdir: Path) -> Path:
    section = SECTIONS.get(name, "1")
    out = outdir / f"{name}.{section}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run([program, "--module", module, "--object", "parser",
                    "--project-name", "qsf", "--version", version,
                    "--description", summary(module), "--author", "the qsf developers",
                    "--manual-section", section, "--manual-title", "qsf manual",
                    "--url", URL, "--output", str(out)],
                   check=True, env=env)
    # argparse-manpage titles the page with the parser's prog: it must be the command.
    title = out.read_text().splitlines()[0].replace("\\", "")
    if not title.startswith(f".TH {name.upper()} "):
        sys.exit(f"manpages.py: {out} is titled {title!r}: set prog={name!r} on its parser")
    return out


def main() -> None:
    cli = argparse.ArgumentParser(description="Write qsf's man pages.")
    cli.add_argument("outdir", nargs="?", type=Path, help="directory for NAME.1 files")
    cli.add_argument("--list", action="store_true", help="print the commands and exit")
    args = cli.parse_args()
    if args.list:
        for name, module in commands().items():
            print(name, module)
        for alias, name in ALIASES.items():
            print(alias, f"(alias of {name})")
        return
    if args.outdir is None:
        cli.error("OUTDIR is required")
    args.outdir.mkdir(parents=True, exist_ok=True)
    program = generator()
    sys.path.insert(0, str(REPO))
    for name, module in commands().items():
        print(write_page(program, name, module, project()["version"], args.outdir))
    for alias, name in ALIASES.items():
        section = SECTIONS.get(name, "1")
        out = args.outdir / f"{alias}.{section}"
        out.write_text(f".so man{section}/{name}.{section}\n")
        print(out)


if __name__ == "__main__":
    main()
