"""Where dom0's state lives. The defaults are the real Qubes paths.

Tests and qsf_sim pass their own Config (or set QSF_DOM0_ROOT, a prefix put
before every default path). Only dom0 itself sets the environment of a dom0
service, so no qube can move these paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qsf_dom0.decisions import ONCE_TTL

ROOT_VARIABLE: Final = "QSF_DOM0_ROOT"


@dataclass(frozen=True, slots=True)
class Config:
    store_path: Path = Path("/etc/qubes/shared-folders/qsf-decisions.json")
    upstream_db: Path = Path("/etc/qubes/shared-folders/policy.db")
    grants_dir: Path = Path("/etc/qubes/policy.d")  # persistent policy lines
    once_dir: Path = Path("/run/qubes/policy.d")  # one-time lines: gone after a reboot
    state_dir: Path = Path("/run/qsf")  # prompt locks and rate-limit counters
    # The socket service of qsf-ask-agent when dom0 is the GUI domain.
    ask_socket: Path = Path("/etc/qubes-rpc/qsf.AskFolderAccess")
    once_ttl: float = ONCE_TTL
    prompts_per_minute: int = 3

    @classmethod
    def under(cls, root: Path) -> Config:
        """The default layout below `root` instead of /."""
        default = cls()
        return cls(
            store_path=root / default.store_path.relative_to("/"),
            upstream_db=root / default.upstream_db.relative_to("/"),
            grants_dir=root / default.grants_dir.relative_to("/"),
            once_dir=root / default.once_dir.relative_to("/"),
            state_dir=root / default.state_dir.relative_to("/"),
            ask_socket=root / default.ask_socket.relative_to("/"),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Config:
        root = environ.get(ROOT_VARIABLE)
        if root:
            return cls.under(Path(root))
        return cls()
