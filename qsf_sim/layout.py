"""Where things live under a simulator root, and what a simulated qube is.

    ROOT/sim.json                      the configuration (written by setup, read by the daemon)
    ROOT/qubes/NAME/                   one tree per qube, laid out as in a qube:
        home/user/                       its home (owned by the qube's Unix user)
        etc/qubes-rpc/                   services installed by packages
        usr/local/etc/qubes-rpc/         services installed locally
        bin/qrexec-client-vm             the simulator's client, first on the qube's PATH
        etc/qubes/policy.d/              (dom0 only) persistent policy
        run/qubes/policy.d/              (dom0 only) runtime policy
    ROOT/sockets/NAME                  the qube's socket (owner: the qube's user, mode 0600)
    ROOT/log/NAME.log                  stderr of the services run in that qube
    ROOT/prompt/                       (root only) scripted answers and the log of every prompt
    ROOT/halted/NAME                   (root only) qube NAME is down: calls to it fail (125)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

QUBE_NAME = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
DISPOSABLE_NAME = re.compile(r"\Adisp[0-9]+\Z")
QUBE_TYPES = ("AdminVM", "AppVM", "DispVM", "TemplateVM", "StandaloneVM")
TAG = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
ADMIN = "dom0"
CONFIG_VERSION = 1
LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")


class LayoutError(ValueError):
    """A qube description or a simulator root is not valid."""


@dataclass(frozen=True)
class Qube:
    """A simulated qube: its name, type and the properties qrexec policy looks at."""

    name: str
    type: str = "AppVM"
    tags: tuple[str, ...] = ()
    # An AppVM that disposables can be made from (policy token @dispvm:NAME).
    template_for_dispvms: bool = False
    # The template of the disposables this qube starts with @dispvm.
    default_dispvm: str | None = None
    # For a DispVM: the template it was made from.
    template: str | None = None
    # Extra environment for the services and commands of this qube (e.g. dom0 paths).
    env: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Qubes properties qsf's dom0 reads (qsf_sim.gui_domain): the label's name, and the
    # GUI domain showing this qube's windows (None: dom0).
    label: str = "red"
    guivm: str | None = None

    def __post_init__(self) -> None:
        if not QUBE_NAME.match(self.name):
            raise LayoutError(f"invalid qube name: {self.name!r}")
        if self.type not in QUBE_TYPES:
            raise LayoutError(f"{self.name}: unknown qube type {self.type!r}")
        if (self.name == ADMIN) != (self.type == "AdminVM"):
            raise LayoutError(f"{self.name}: only dom0 is the AdminVM")
        if self.type == "DispVM" and not DISPOSABLE_NAME.match(self.name):
            raise LayoutError(f"{self.name}: disposable qubes are named disp + digits")
        for tag in self.tags:
            if not TAG.match(tag):
                raise LayoutError(f"{self.name}: invalid tag {tag!r}")
        if self.label not in LABELS:
            raise LayoutError(f"{self.name}: unknown label {self.label!r}")
        if self.guivm is not None and not QUBE_NAME.match(self.guivm):
            raise LayoutError(f"{self.name}: invalid guivm {self.guivm!r}")

    @classmethod
    def parse(cls, text: str) -> Qube:
        """`NAME[:TYPE[:TAG,TAG...]]`; a `disp<digits>` name defaults to DispVM."""
        name, _, rest = text.partition(":")
        kind, _, tags = rest.partition(":")
        if not kind:
            kind = ("AdminVM" if name == ADMIN
                    else "DispVM" if DISPOSABLE_NAME.match(name) else "AppVM")
        return cls(name, kind, tuple(t for t in tags.split(",") if t))

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "tags": list(self.tags),
                "template_for_dispvms": self.template_for_dispvms,
                "default_dispvm": self.default_dispvm, "template": self.template,
                "env": dict(self.env), "label": self.label, "guivm": self.guivm}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Qube:
        tags = data.get("tags", [])
        env = data.get("env", {})
        if not isinstance(tags, list) or not isinstance(env, dict):
            raise LayoutError(f"bad qube entry: {data!r}")
        default_dispvm = data.get("default_dispvm")
        template = data.get("template")
        guivm = data.get("guivm")
        return cls(name=str(data["name"]), type=str(data.get("type", "AppVM")),
                   tags=tuple(str(t) for t in tags),
                   template_for_dispvms=bool(data.get("template_for_dispvms", False)),
                   default_dispvm=None if default_dispvm is None else str(default_dispvm),
                   template=None if template is None else str(template),
                   env={str(k): str(v) for k, v in env.items()},
                   label=str(data.get("label", "red")),
                   guivm=None if guivm is None else str(guivm))


@dataclass(frozen=True)
class SimConfig:
    """What the daemon needs to know: the qubes and how to run things."""

    qubes: tuple[Qube, ...]
    python: str
    # Run every service in a private mount namespace where the qube's home is /home/user.
    private_home: bool = False
    # Make dom0's policy directories writable by dom0's Unix user (for qsf's dom0 services).
    dom0_policy_writable: bool = True
    # Where answers to `ask` come from: "scripted" (ROOT/prompt/answers) or "terminal".
    prompt: str = "scripted"
    # qsf's own dom0 dialog (qsf.AuthorizeFolderAccess): "scripted", "terminal" or "gui"
    # (the real dialog through qsf-ask-agent in the client's GUI domain) through
    # qsf_sim.dom0_services, or "project" to run the project's service file unchanged.
    qsf_prompt: str = "scripted"

    def __post_init__(self) -> None:
        names = [q.name for q in self.qubes]
        if len(set(names)) != len(names):
            raise LayoutError("duplicate qube names")
        if ADMIN not in names:
            raise LayoutError("the simulation needs dom0")
        if self.prompt not in ("scripted", "terminal"):
            raise LayoutError(f"unknown prompt kind {self.prompt!r}")
        if self.qsf_prompt not in ("scripted", "terminal", "gui", "project"):
            raise LayoutError(f"unknown qsf prompt kind {self.qsf_prompt!r}")

    def qube(self, name: str) -> Qube | None:
        for qube in self.qubes:
            if qube.name == name:
                return qube
        return None

    def save(self, root: Path) -> None:
        data = {"version": CONFIG_VERSION, "qubes": [q.to_json() for q in self.qubes],
                "python": self.python, "private_home": self.private_home,
                "dom0_policy_writable": self.dom0_policy_writable, "prompt": self.prompt,
                "qsf_prompt": self.qsf_prompt}
        temp = root / ".sim.json.tmp"
        temp.write_text(json.dumps(data, indent=2) + "\n")
        temp.rename(config_path(root))

    @classmethod
    def load(cls, root: Path) -> SimConfig:
        try:
            data = json.loads(config_path(root).read_text())
        except (OSError, ValueError) as error:
            raise LayoutError(f"cannot read {config_path(root)}: {error}") from error
        if not isinstance(data, dict) or data.get("version") != CONFIG_VERSION:
            raise LayoutError(f"{config_path(root)}: unknown format")
        return cls(qubes=tuple(Qube.from_json(q) for q in data["qubes"]),
                   python=str(data["python"]), private_home=bool(data["private_home"]),
                   dom0_policy_writable=bool(data["dom0_policy_writable"]),
                   prompt=str(data["prompt"]), qsf_prompt=str(data["qsf_prompt"]))


def config_path(root: Path) -> Path:
    return root / "sim.json"


def qube_dir(root: Path, name: str) -> Path:
    return root / "qubes" / name


def qube_home(root: Path, name: str) -> Path:
    return qube_dir(root, name) / "home" / "user"


def qube_bin(root: Path, name: str) -> Path:
    return qube_dir(root, name) / "bin"


def qube_socket(root: Path, name: str) -> Path:
    """The Unix socket through which qube `name` (and only it) calls services."""
    return root / "sockets" / name


def service_dirs(root: Path, name: str) -> tuple[Path, Path]:
    """Service directories of a qube, in lookup order."""
    tree = qube_dir(root, name)
    return (tree / "usr" / "local" / "etc" / "qubes-rpc", tree / "etc" / "qubes-rpc")


def policy_dirs(root: Path) -> tuple[Path, Path]:
    """dom0's policy directories: runtime first (a file there hides one of the same name)."""
    tree = qube_dir(root, ADMIN)
    return (tree / "run" / "qubes" / "policy.d", tree / "etc" / "qubes" / "policy.d")


def log_path(root: Path, name: str) -> Path:
    return root / "log" / f"{name}.log"


def prompt_dir(root: Path) -> Path:
    return root / "prompt"


def halted_marker(root: Path, name: str) -> Path:
    """Present while qube `name` is halted and cannot be started (root only)."""
    return root / "halted" / name


def unix_user(name: str) -> str:
    """The Unix user of a simulated qube (at most 32 characters, lower case)."""
    if re.fullmatch(r"[a-z0-9_-]{1,24}", name):
        return f"qsfsim-{name}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"qsfsim-{re.sub(r'[^a-z0-9_-]', '_', name.lower())[:15]}-{digest}"


def qube_path_env(root: Path, name: str, extra: Iterable[str]) -> str:
    """PATH inside a qube: its own bin (the simulator's qrexec-client-vm) first."""
    system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    return ":".join([str(qube_bin(root, name)), *extra, *system])
