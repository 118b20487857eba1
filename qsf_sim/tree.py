"""Build a simulator root: every qube's tree and user, and the installed files.

The project's files are installed as its packages would install them: dom0's
services (DOM0_SERVICES) in dom0's /etc/qubes-rpc, the other services in every
other qube's /etc/qubes-rpc, policy/*.policy in dom0's /etc/qubes/policy.d.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from qsf_sim import gui_domain
from qsf_sim.layout import (
    ADMIN,
    LayoutError,
    SimConfig,
    log_path,
    policy_dirs,
    prompt_dir,
    qube_bin,
    qube_dir,
    qube_home,
    qube_socket,
    service_dirs,
)
from qsf_sim.runas import Identity, ensure_user, lookup, separated

REPO = Path(__file__).resolve().parent.parent
DOM0_SERVICES = frozenset({"qsf.AuthorizeFolderAccess", "qsf.QueryFolderAuthorization"})
# Directories of dom0 that its own user may write when dom0_policy_writable is set:
# the policy directories and the state of qsf's dom0 services (qsf_dom0.config).
DOM0_WRITABLE = ("etc/qubes/policy.d", "run/qubes/policy.d", "etc/qubes/shared-folders",
                 "run/qsf")
# qsf_sim.dom0_services' scripted answers and prompt log (dom0's user only).
DOM0_SIM_STATE = "run/qsf-sim"
FOLDER_ANSWERS = "answers"
FOLDER_PROMPTS = "prompts"
FOLDER_ANSWER = re.compile(r"\A(once|always|deny|never|block)( (ro|rw))?\Z")
AUTHORIZE = "qsf.AuthorizeFolderAccess"
SERVICE_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-+")


def check_reachable(root: Path) -> None:
    """Every qube user must be able to walk down to ROOT: no 0700 parent on the way."""
    if not separated():
        return
    for directory in [root, *root.parents]:
        if not directory.stat().st_mode & 0o001:
            raise LayoutError(f"{directory} is not searchable by other users: "
                              "choose a simulator root every qube's user can reach")


def _mkdir(path: Path, mode: int = 0o755, owner: Identity | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None and separated():
        os.chown(path, owner.uid, owner.gid)


def _write(path: Path, content: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(content)
    os.chmod(temp, mode)
    temp.rename(path)


def client_script(root: Path, name: str, python: str) -> str:
    socket_path = qube_socket(root, name)
    return ("#!/bin/sh\n"
            f"# qrexec-client-vm of simulated qube {name} (qsf_sim)\n"
            f"exec {shlex.quote(python)} -m qsf_sim.client_vm"
            f" --sim-socket {shlex.quote(str(socket_path))} \"$@\"\n")


def build(root: Path, config: SimConfig, *, project_files: bool = True) -> None:
    """Create (or refresh) the root for `config`; idempotent."""
    _mkdir(root)
    check_reachable(root)
    for top in ("qubes", "sockets", "log"):
        _mkdir(root / top)
    _mkdir(prompt_dir(root), 0o700)
    _mkdir(root / "halted", 0o700)
    for qube in config.qubes:
        tree = qube_dir(root, qube.name)
        _mkdir(tree)
        identity = ensure_user(qube.name, qube_home(root, qube.name))
        _mkdir(tree / "home")
        _mkdir(qube_home(root, qube.name), 0o700, identity)
        for service_dir in service_dirs(root, qube.name):
            _mkdir(service_dir)
        _mkdir(tree / "etc" / "qubes" / "rpc-config")
        _mkdir(qube_bin(root, qube.name))
        _write(qube_bin(root, qube.name) / "qrexec-client-vm",
               client_script(root, qube.name, config.python).encode(), 0o755)
        log = log_path(root, qube.name)
        log.touch()
        os.chmod(log, 0o644)
    dom0 = lookup(ADMIN)
    for policy_dir in policy_dirs(root):
        _mkdir(policy_dir)
    for relative in DOM0_WRITABLE:
        path = qube_dir(root, ADMIN) / relative
        if config.dom0_policy_writable:
            _mkdir(path, 0o775, dom0)
        else:
            _mkdir(path, 0o755, Identity(os.geteuid(), os.getegid(), "root"))
    _mkdir(qube_dir(root, ADMIN) / DOM0_SIM_STATE, 0o700, dom0)
    install_gui_domains(root, config)
    if project_files:
        install_project(root, config)
        if config.qsf_prompt != "project" and (REPO / "qubes-rpc" / AUTHORIZE).is_file():
            install_service(root, ADMIN, AUTHORIZE,
                            "#!/bin/sh\n# qsf_sim: the project's service with the simulator's "
                            "prompt\nexec python3 -m qsf_sim.dom0_services "
                            f"{config.qsf_prompt}\n")
    config.save(root)


def install_gui_domains(root: Path, config: SimConfig) -> None:
    """What qsf's dialog needs: dom0's view of every qube's guivm and label, and in dom0
    and each GUI qube the agent's run directory and the qsf.AskFolderAccess symlink."""
    dom0 = lookup(ADMIN)
    path = qube_dir(root, ADMIN) / DOM0_SIM_STATE / gui_domain.QUBES_FILE
    _write(path, gui_domain.qubes_document(config.qubes), 0o644)
    if separated():
        os.chown(path, dom0.uid, dom0.gid)
    gui_qubes = {ADMIN} | {q.guivm for q in config.qubes if q.guivm is not None}
    for name in sorted(gui_qubes):
        if config.qube(name) is None:
            raise LayoutError(f"guivm {name} is not a simulated qube")
        socket_path = gui_domain.agent_socket(root, name)
        _mkdir(socket_path.parent.parent, 0o755)
        _mkdir(socket_path.parent, 0o755, lookup(name))
        link = gui_domain.service_link(root, name)
        if not link.is_symlink():
            link.symlink_to(socket_path)


def install_service(root: Path, qube: str, name: str, content: str | bytes, *,
                    local: bool = False) -> Path:
    """Install an executable service file in a qube (/usr/local/etc/qubes-rpc if local)."""
    if not name or set(name) - SERVICE_NAME_CHARS:
        raise LayoutError(f"invalid service file name {name!r}")
    local_dir, system_dir = service_dirs(root, qube)
    path = (local_dir if local else system_dir) / name
    _write(path, content.encode() if isinstance(content, str) else content, 0o755)
    return path


def install_policy(root: Path, name: str, text: str, *, runtime: bool = False) -> Path:
    """Write a file into dom0's policy directory (not validated: tests write bad ones too)."""
    if "/" in name or name in ("", ".", ".."):
        raise LayoutError(f"invalid policy file name {name!r}")
    runtime_dir, persistent_dir = policy_dirs(root)
    path = (runtime_dir if runtime else persistent_dir) / name
    _write(path, text.encode(), 0o664)
    return path


def install_project(root: Path, config: SimConfig) -> None:
    """The project's qubes-rpc/ services and policy/ files, where packages put them."""
    for source in sorted((REPO / "qubes-rpc").glob("*")):
        if not source.is_file() or source.name.startswith("."):
            continue
        targets = ([ADMIN] if source.name in DOM0_SERVICES
                   else [q.name for q in config.qubes if q.name != ADMIN])
        for qube in targets:
            install_service(root, qube, source.name, source.read_bytes())
    for source in sorted((REPO / "policy").glob("*.policy")):
        install_policy(root, source.name, source.read_text())
