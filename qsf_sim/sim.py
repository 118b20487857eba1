"""Python API of the simulator, for tests and the demo.

    with Sim(root, ["work", "server"]) as sim:          # dom0 is always there
        sim.install_policy("30-test.policy", "test.Echo * work server allow\\n")
        sim.install_service("server", "test.Echo", "#!/bin/sh\\nexec cat\\n")
        result = sim.run("work", ["qrexec-client-vm", "server", "test.Echo"], input=b"hi")

The daemon runs as a separate process (`python -m qsf_sim.cli daemon`); commands in a
qube run as that qube's user, with its PATH (its qrexec-client-vm first) and HOME.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qsf_sim import gui_domain, prompt, tree
from qsf_sim.layout import (
    ADMIN,
    Qube,
    SimConfig,
    halted_marker,
    log_path,
    qube_dir,
    qube_home,
    qube_socket,
)
from qsf_sim.runas import environment, lookup, namespace_prefix, popen_identity, remove_user

DOM0_ROOT_VARIABLE = "QSF_DOM0_ROOT"  # qsf_dom0.config: prefix of every dom0 path
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class SimError(RuntimeError):
    pass


def _as_qube(spec: Qube | str) -> Qube:
    return spec if isinstance(spec, Qube) else Qube.parse(spec)


class Sim:
    def __init__(self, root: Path | str, qubes: Iterable[Qube | str] = ("work",), *,
                 project_files: bool = True, private_home: bool = False,
                 dom0_policy_writable: bool = True, prompt_kind: str = "scripted",
                 qsf_prompt: str = "scripted", python: str = sys.executable) -> None:
        self.root = Path(root).absolute()
        specs = [_as_qube(q) for q in qubes]
        if not any(q.name == ADMIN for q in specs):
            specs.insert(0, Qube(ADMIN, "AdminVM"))
        specs = [self._with_dom0_env(q) for q in specs]
        self.config = SimConfig(qubes=tuple(specs), python=python, private_home=private_home,
                                dom0_policy_writable=dom0_policy_writable, prompt=prompt_kind,
                                qsf_prompt=qsf_prompt)
        self.project_files = project_files
        self.daemon: subprocess.Popen[bytes] | None = None

    def _with_dom0_env(self, qube: Qube) -> Qube:
        if qube.name != ADMIN or DOM0_ROOT_VARIABLE in qube.env:
            return qube
        env = {**qube.env, DOM0_ROOT_VARIABLE: str(qube_dir(self.root, ADMIN))}
        return dataclasses.replace(qube, env=env)

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> Sim:
        """Build the root (idempotent) and start the daemon; returns once it listens."""
        if self.daemon is not None:
            raise SimError("already started")
        tree.build(self.root, self.config, project_files=self.project_files)
        self.start_daemon()
        return self

    def start_daemon(self) -> None:
        read_fd, write_fd = os.pipe()
        log = open(self.root / "log" / "daemon.log", "ab")  # noqa: SIM115 (kept by Popen)
        try:
            self.daemon = subprocess.Popen(
                [self.config.python, "-m", "qsf_sim.cli", "daemon", "--root", str(self.root),
                 "--ready-fd", str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[write_fd])
        finally:
            os.close(write_fd)
            log.close()
        try:
            ready, _, _ = select.select([read_fd], [], [], START_TIMEOUT)
            line = os.read(read_fd, 64) if ready else b""
        finally:
            os.close(read_fd)
        if line != b"ready\n":
            self.stop_daemon()
            raise SimError(f"the qsf_sim daemon did not start; see {self.root}/log/daemon.log:\n"
                           + self.daemon_log()[-2000:])

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is None or daemon.poll() is not None:
            return
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()

    def restart_daemon(self) -> None:
        """dom0's qrexec goes down and up again (the files under ROOT stay)."""
        self.stop_daemon()
        self.start_daemon()

    def stop(self) -> None:
        self.stop_daemon()

    def remove_users(self) -> None:
        """Delete the Unix users of this simulation's qubes (they are reused otherwise)."""
        for qube in self.config.qubes:
            remove_user(qube.name)

    def __enter__(self) -> Sim:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # --- running things in a qube ---------------------------------------------------

    def qube(self, name: str) -> Qube:
        qube = self.config.qube(name)
        if qube is None:
            raise SimError(f"no simulated qube {name!r}")
        return qube

    def env(self, name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of a command in qube `name` (its PATH, HOME, USER)."""
        env = environment(self.root, self.config, self.qube(name), lookup(name))
        env.update(extra or {})
        return env

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` as qube `name`'s user (for use with env(name))."""
        identity = lookup(name)
        if self.config.private_home:
            return namespace_prefix(self.root, self.qube(name), identity) + list(argv)
        if not popen_identity(identity):
            return list(argv)
        return ["setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}",
                "--clear-groups", "--", *argv]

    def popen(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` in qube `name`, as its user, in its home."""
        kwargs.setdefault("cwd", "/" if self.config.private_home else self.home(name))
        return subprocess.Popen(self.command(name, argv), env=self.env(name, env), **kwargs)

    def run(self, name: str, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float = 60, env: Mapping[str, str] | None = None,
            **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` in qube `name` and capture its output (unless told otherwise)."""
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs["capture_output"] = True
        kwargs.setdefault("cwd", "/" if self.config.private_home else self.home(name))
        return subprocess.run(self.command(name, argv), env=self.env(name, env), input=input,
                              timeout=timeout, check=False, **kwargs)

    def call(self, source: str, target: str, service: str, *, input: bytes = b"",
             local_program: Sequence[str] = (),
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """`qrexec-client-vm TARGET SERVICE [LOCAL_PROGRAM...]` in qube `source`."""
        return self.run(source, ["qrexec-client-vm", target, service, *local_program],
                        input=input, timeout=timeout)

    def start_ask_agent(self, name: str, display: Mapping[str, str], *options: str,
                        timeout: float = START_TIMEOUT) -> subprocess.Popen[bytes]:
        """Start qsf-ask-agent in qube `name` (dom0 or a GUI qube) as its user, on the X
        display that `display` names (DISPLAY, ...: the user's or an XSession's), as the
        session's autostart would; returns once its socket listens. Its log goes to the
        qube's service log. The caller stops it (terminate)."""
        socket_path = gui_domain.agent_socket(self.root, name)
        env = {k: v for k, v in display.items() if k in ("DISPLAY", "GDK_BACKEND")}
        env["NO_AT_BRIDGE"] = "1"  # another user's session bus is closed to the qube's user
        log = open(log_path(self.root, name), "ab")  # noqa: SIM115 (kept by Popen)
        with log:
            agent = self.popen(name, [self.config.python, "-m", "qsf_ask.agent", "--socket",
                                      str(socket_path), *options], env=env,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not socket_path.is_socket():
            if agent.poll() is not None or time.monotonic() > deadline:
                agent.kill()
                agent.wait()
                raise SimError(f"qsf-ask-agent did not start in {name}; see "
                               f"{log_path(self.root, name)}")
            time.sleep(0.05)
        return agent

    # --- files, prompts, logs -------------------------------------------------------

    def home(self, name: str) -> Path:
        return qube_home(self.root, name)

    def socket(self, name: str) -> Path:
        return qube_socket(self.root, name)

    def install_service(self, qube: str, name: str, content: str | bytes, *,
                        local: bool = False) -> Path:
        self.qube(qube)
        return tree.install_service(self.root, qube, name, content, local=local)

    def set_running(self, name: str, running: bool) -> None:
        """Halt qube `name` (calls to it fail as when Qubes cannot start it) or let it run."""
        self.qube(name)
        marker = halted_marker(self.root, name)
        if running:
            marker.unlink(missing_ok=True)
        else:
            marker.touch()

    def install_policy(self, name: str, text: str, *, runtime: bool = False) -> Path:
        return tree.install_policy(self.root, name, text, runtime=runtime)

    def answer(self, *answers: str) -> None:
        """Queue scripted answers for the next `ask` prompts: "allow [TARGET]" or "deny"."""
        prompt.push_answers(self.root, answers)

    def prompts(self) -> list[dict[str, object]]:
        """Every `ask` prompt so far, with its answer."""
        return prompt.read_log(self.root)

    def answer_folder(self, *answers: str) -> None:
        """Queue answers for qsf's dom0 dialog: "once|always|deny|never|block [ro|rw]"."""
        for answer in answers:
            if not tree.FOLDER_ANSWER.match(answer):
                raise ValueError(f"not a folder answer: {answer!r}")
        path = self._dom0_state() / tree.FOLDER_ANSWERS
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            identity = lookup(ADMIN)
            os.fchown(file.fileno(), identity.uid, identity.gid)
            file.write("".join(a + "\n" for a in answers))

    def folder_prompts(self) -> list[dict[str, object]]:
        """Every qsf dom0 dialog so far (scripted mode), with its answer."""
        try:
            text = (self._dom0_state() / tree.FOLDER_PROMPTS).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]

    def _dom0_state(self) -> Path:
        return qube_dir(self.root, ADMIN) / tree.DOM0_SIM_STATE

    def service_log(self, name: str) -> str:
        """stderr of the services run in qube `name`."""
        return log_path(self.root, name).read_text(errors="replace")

    def daemon_log(self) -> str:
        try:
            return (self.root / "log" / "daemon.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

