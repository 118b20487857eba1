"""Who a simulated qube is on this machine, and how to run a program as that qube.

As root, every qube has its own system user (see layout.unix_user), created with
useradd. Without root there is one user for all: the simulator then still runs,
but the identities of the qubes are not separated (development only).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsf_sim.layout import Qube, SimConfig, qube_home, qube_path_env, unix_user

NAMESPACE_HOME = "/home/user"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user: str


def separated() -> bool:
    """True when every qube has its own Unix user (the simulator runs as root)."""
    return os.geteuid() == 0


def lookup(name: str) -> Identity:
    """The Unix identity of qube `name` (KeyError if its user was never created)."""
    entry = pwd.getpwnam(unix_user(name)) if separated() else pwd.getpwuid(os.geteuid())
    return Identity(entry.pw_uid, entry.pw_gid, entry.pw_name)


def ensure_user(name: str, home: Path) -> Identity:
    """Create the system user of qube `name` unless it exists; return its identity."""
    if not separated():
        return lookup(name)
    user = unix_user(name)
    for attempt in range(20):
        try:
            return lookup(name)
        except KeyError:
            pass
        # useradd fails while another useradd holds /etc/passwd's lock: retry.
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
             "--shell", "/usr/sbin/nologin", "--comment", f"qsf_sim qube {name}", user],
            capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return lookup(name)
        if result.returncode != 10 and "lock" not in result.stderr and attempt > 2:
            raise OSError(f"useradd {user} failed: {result.stderr.strip()}")
        time.sleep(0.1 * (attempt + 1))
    raise OSError(f"useradd {user}: /etc/passwd stayed locked")


def remove_user(name: str) -> None:
    if separated():
        subprocess.run(["userdel", unix_user(name)], capture_output=True, check=False)


def popen_identity(identity: Identity) -> dict[str, Any]:
    """Keyword arguments of subprocess/asyncio process creation to run as `identity`."""
    if not separated() or identity.uid == os.geteuid():
        return {}
    return {"user": identity.uid, "group": identity.gid, "extra_groups": []}


def environment(root: Path, config: SimConfig, qube: Qube, identity: Identity) -> dict[str, str]:
    """The environment of a program in a qube, before any QREXEC_* variable."""
    python_bin = str(Path(config.python).parent)
    home = NAMESPACE_HOME if config.private_home else str(qube_home(root, qube.name))
    env = {
        "PATH": qube_path_env(root, qube.name, [python_bin]),
        "HOME": home,
        "USER": identity.user,
        "LOGNAME": identity.user,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
    }
    env.update(qube.env)
    return env


def namespace_prefix(root: Path, qube: Qube, identity: Identity) -> list[str]:
    """argv prefix: a private mount namespace where the qube's home is /home/user.

    It runs as root (mounting needs it), then drops to the qube's user with setpriv.
    """
    script = ('mount -t tmpfs -o mode=0755 qsfsim-home /home && mkdir /home/user'
              ' && mount --bind "$0" /home/user && cd /home/user'
              ' && uid="$1" gid="$2" && shift 2'
              ' && exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            str(qube_home(root, qube.name)), str(identity.uid), str(identity.gid)]
