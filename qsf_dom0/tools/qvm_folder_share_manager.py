"""qvm-folder-share-manager: the folder share manager window (GTK 3) in dom0."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from qsf_dom0.config import ROOT_VARIABLE, Config


def get_parser() -> argparse.ArgumentParser:
    """The command's parser (also read by argparse-manpage)."""
    main_parser = argparse.ArgumentParser(
        prog="qvm-folder-share-manager",
        description=(
            "The folder share manager: lists the remembered folder-sharing decisions "
            "(grants, denials, blocks; a pending one-time grant is shown but cannot be "
            "edited), revokes them, changes a grant between read-only and read-write and adds "
            "a grant or a denial ahead of time. The list follows changes made elsewhere (the "
            "dialog, shares in use, qvm-folder-share); a change is never saved over one made "
            "meanwhile: the window says so and reloads. Saving needs root in dom0."
        ),
        epilog=f"Exit status: 0 when the window is closed, 1 without a display, 2 usage "
        f"error. {ROOT_VARIABLE}=DIR puts every dom0 path below DIR (tests, qsf_sim). "
        "qvm-folder-share does the same from a terminal.",
    )
    main_parser.add_argument(
        "--poll", metavar="SECONDS", type=float, default=1.0,
        help="how often the store is checked for changes made elsewhere (default 1)",
    )
    return main_parser


parser = get_parser()


def main(args: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    options = parser.parse_args(args)
    if not 0.05 <= options.poll <= 3600:
        parser.error("--poll must be within 0.05..3600 seconds")
    if not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        print(f"{parser.prog}: error: no display (DISPLAY is not set); "
              "use qvm-folder-share in a terminal", file=sys.stderr)
        return 1
    from qsf_dom0.admin import Admin
    from qsf_dom0.manager import ManagerModel

    try:
        from qsf_dom0 import manager_window
    except (ImportError, ValueError) as error:
        print(f"{parser.prog}: error: GTK 3 is not available ({error}; python3-gi, "
              "gir1.2-gtk-3.0)", file=sys.stderr)
        return 1
    return manager_window.run(ManagerModel(Admin(Config.from_environ(environ))), options.poll)


if __name__ == "__main__":
    sys.exit(main())
