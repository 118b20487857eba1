"""The simulated GUI domain: what dom0 knows of each qube's guivm and label, and the agent.

dom0's qsf.AuthorizeFolderAccess in "gui" mode (qsf_sim.dom0_services) reads the
qubes' properties from QUBES_FILE under dom0's simulator state (written by
qsf_sim.tree from the Qube specs) through `SimQubeDirectory`, the simulator's
implementation of qsf_dom0.qubes.QubeDirectory. A qube whose guivm is set is asked
through qrexec (`qrexec-client-vm GUIVM qsf.AskFolderAccess` from dom0: in the
simulator dom0 calls like a qube, so 80-qsf.policy decides); dom0 itself through its
socket service. `agent_socket` / `service_link` say where qsf-ask-agent listens in a
simulated qube and where /etc/qubes-rpc/qsf.AskFolderAccess links to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from qsf_sim.layout import Qube, qube_dir, service_dirs

QUBES_FILE: Final = "qubes.json"
SERVICE: Final = "qsf.AskFolderAccess"
MAX_QUBES_FILE: Final = 1 << 20


class SimQubeDirectory:
    """guivm and label of the simulated qubes (qsf_dom0.qubes.QubeDirectory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _entry(self, name: str) -> dict[str, object]:
        from qsf_dom0.qubes import QubeLookupError

        try:
            with open(self.path, "rb") as file:
                document = json.loads(file.read(MAX_QUBES_FILE))
            entry = document[name]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise QubeLookupError(f"{name}: {error!r}") from error
        if not isinstance(entry, dict):
            raise QubeLookupError(f"{name}: bad entry")
        return entry

    def guivm(self, name: str) -> str | None:
        value = self._entry(name).get("guivm")
        return None if value is None else str(value)

    def label(self, name: str) -> str:
        return str(self._entry(name).get("label", "red"))


def qubes_document(qubes: tuple[Qube, ...]) -> bytes:
    return json.dumps({q.name: {"label": q.label, "guivm": q.guivm} for q in qubes},
                      indent=1).encode() + b"\n"


def agent_socket(root: Path, qube: str) -> Path:
    """Where qsf-ask-agent listens in a simulated qube (its /var/run/qubes)."""
    return qube_dir(root, qube) / "var" / "run" / "qubes" / "qsf-ask-agent.sock"


def service_link(root: Path, qube: str) -> Path:
    """The qube's /etc/qubes-rpc/qsf.AskFolderAccess (a symlink to the agent's socket)."""
    return service_dirs(root, qube)[1] / SERVICE


def remote_command(guivm: str) -> list[str]:
    """How the simulated dom0 calls the service in another qube."""
    return ["qrexec-client-vm", guivm, SERVICE]
