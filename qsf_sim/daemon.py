"""The daemon playing dom0's qrexec: one socket per qube, policy, services, stream joining.

The protocol on the sockets is in qsf_sim.protocol. The caller is the qube whose
socket was used, and its peer uid (SO_PEERCRED) must be that qube's Unix user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from qsf_sim import policy
from qsf_sim.layout import (
    ADMIN,
    Qube,
    SimConfig,
    halted_marker,
    log_path,
    policy_dirs,
    qube_dir,
    qube_home,
    qube_socket,
    service_dirs,
)
from qsf_sim.prompt import PromptService, ScriptedPrompt, TerminalPrompt
from qsf_sim.protocol import (
    EXIT_STATUS,
    MAX_PAYLOAD,
    MAX_REQUEST,
    Frame,
    ProtocolViolation,
    frame,
    parse_request,
    read_frame_async,
)
from qsf_sim.runas import Identity, environment, lookup, namespace_prefix, popen_identity

log = logging.getLogger("qsf_sim.daemon")

PEERCRED = struct.Struct("3i")
TTY_FD_VARIABLE = "QSF_SIM_TTY_FD"  # read by qsf_sim.dom0_services
MAX_SERVICE_NAME = 255  # bytes of SERVICE+ARG
REQUEST_TIMEOUT = 30.0
MAX_CALLS_PER_QUBE = 128
KILL_GRACE = 3.0
SERVICE_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-+")


class CallFailed(Exception):
    """The call ends with one frame (REFUSE, NOSERVICE or FAIL) and a log line."""

    def __init__(self, kind: Frame, reply: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.reply = reply


def refused(detail: str) -> CallFailed:
    return CallFailed(Frame.REFUSE, "Request refused", detail)


def sanitize_service(untrusted: bytes) -> str:
    """SERVICE+ARG with every byte outside [A-Za-z0-9_.+-] replaced by '_', as qrexec does."""
    return bytes(b if b in SERVICE_CHARS else ord("_") for b in untrusted).decode("ascii")


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
    return int(uid)


def find_service(root: Path, qube: str, service: str, full_name: str) -> Path | None:
    """Lookup order of qrexec: SVC+ARG in every directory, then SVC."""
    names = [full_name, service] if full_name != service else [service]
    for name in names:
        for directory in service_dirs(root, qube):
            path = directory / name
            try:
                info = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o111:
                return path
            if stat.S_ISSOCK(info.st_mode):  # a socket service (qsf_sim.socket_service)
                return path
    return None


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Call:
    source: Qube
    target: Qube
    service: str
    argument: str | None  # text after the first '+', None without '+'
    requested: str  # the target as the caller wrote it
    user: str | None


class Daemon:
    def __init__(self, root: Path, config: SimConfig) -> None:
        self.root = root
        self.config = config
        self.system = {q.name: q for q in config.qubes}
        self.identities = {q.name: lookup(q.name) for q in config.qubes}
        prompter = TerminalPrompt() if config.prompt == "terminal" else ScriptedPrompt(root)
        self.prompts = PromptService(root, prompter)
        self.children: set[asyncio.subprocess.Process] = set()
        self.active = {q.name: 0 for q in config.qubes}  # calls in progress per caller
        self.tty_fd: int | None = None  # the daemon's terminal, for qsf's dom0 dialog
        if config.qsf_prompt == "terminal":
            with contextlib.suppress(OSError):
                self.tty_fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)

    async def serve(self, ready: Callable[[], None]) -> None:
        """Listen on every qube's socket until SIGTERM or SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        servers = []
        try:
            for qube in self.config.qubes:
                servers.append(await asyncio.start_unix_server(
                    self._handler(qube), sock=self._listen(qube)))
            ready()
            log.info("serving %d qubes under %s", len(servers), self.root)
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            await self._kill_children()
            for qube in self.config.qubes:
                with contextlib.suppress(FileNotFoundError):
                    qube_socket(self.root, qube.name).unlink()

    def _listen(self, qube: Qube) -> socket.socket:
        path = qube_socket(self.root, qube.name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        identity = self.identities[qube.name]
        if os.geteuid() == 0:
            os.chown(path, identity.uid, identity.gid)
        os.chmod(path, 0o600)
        sock.listen(64)
        return sock

    def _handler(self, qube: Qube) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                               Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._connection(qube, reader, writer)
            except (ConnectionError, ProtocolViolation) as error:
                log.info("%s: connection ended: %s", qube.name, error)
            except Exception:
                log.exception("%s: internal error", qube.name)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return handle

    async def _connection(self, qube: Qube, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock)
        if uid != self.identities[qube.name].uid:
            log.warning("%s: connection from uid %d refused (not the qube's user)", qube.name, uid)
            writer.write(frame(Frame.FAIL, b"caller is not this qube's user"))
            await writer.drain()
            return
        if self.active[qube.name] >= MAX_CALLS_PER_QUBE:
            log.warning("%s: too many calls at once", qube.name)
            writer.write(frame(Frame.FAIL, b"too many calls at once"))
            await writer.drain()
            return
        self.active[qube.name] += 1
        try:
            await self._call(qube, reader, writer)
        finally:
            self.active[qube.name] -= 1

    async def _call(self, qube: Qube, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            received = await asyncio.wait_for(read_frame_async(reader), REQUEST_TIMEOUT)
        except TimeoutError:
            log.info("%s: no request", qube.name)
            return
        if received is None:
            return
        kind, payload = received
        try:
            if kind != Frame.REQUEST or len(payload) > MAX_REQUEST:
                raise CallFailed(Frame.FAIL, "bad request", "first frame is not a request")
            call = await self._authorize(qube, payload)
            if halted_marker(self.root, call.target.name).exists():
                # As in Qubes: policy first, then the target is started, which fails here.
                raise CallFailed(Frame.FAIL, f"qube {call.target.name} could not be started",
                                 f"{call.target.name} is halted")
            path = find_service(self.root, call.target.name, call.service,
                                self._full_name(call))
            if path is None:
                raise CallFailed(Frame.NOSERVICE, "no such service",
                                 f"{call.target.name} has no service {self._full_name(call)}")
            process, to_service, from_service = await self._spawn(call, path)
        except CallFailed as failure:
            log.info("%s: %s", qube.name, failure)
            writer.write(frame(failure.kind, failure.reply.encode()))
            await writer.drain()
            return
        writer.write(frame(Frame.ACCEPT))
        await writer.drain()
        await self._join(call, process, reader, writer, to_service, from_service)

    @staticmethod
    def _full_name(call: Call) -> str:
        return call.service if call.argument is None else f"{call.service}+{call.argument}"

    async def _authorize(self, source: Qube, payload: bytes) -> Call:
        try:
            untrusted_target, untrusted_service = parse_request(payload)
        except ProtocolViolation as error:
            raise CallFailed(Frame.FAIL, "bad request", str(error)) from None
        if not 0 < len(untrusted_service) <= MAX_SERVICE_NAME:
            raise refused("service name empty or too long")
        full_name = sanitize_service(untrusted_service)
        service, plus, argument = full_name.partition("+")
        if not service:
            raise refused("empty service name")
        try:
            requested = untrusted_target.decode("ascii")
        except UnicodeDecodeError:
            raise refused("target is not ASCII") from None
        request = policy.Request(service, "+" + argument, source.name, requested)
        try:
            rules = policy.load_policy(policy_dirs(self.root), self._resolve_dom0_path)
        except policy.PolicyError as error:
            raise refused(f"policy unusable, every call denied: {error}") from None
        decision = policy.evaluate(rules, request, self.system)
        if decision.action == "ask":
            answer = await self.prompts.ask(request, decision)
            decision = policy.answer_ask(decision, answer.allowed, answer.target)
        if decision.action != "allow" or decision.target is None:
            raise refused(f"{source.name} -> {requested!r} {full_name}: {decision.reason}")
        if decision.target == source.name:
            raise refused(f"{source.name}: loopback call refused")
        target = self.system.get(decision.target)
        if target is None:
            raise CallFailed(Frame.FAIL, "target not simulated",
                             f"{decision.target}: creating disposables is not simulated")
        log.info("%s -> %s %s: %s", source.name, target.name, full_name, decision.reason)
        return Call(source, target, service, argument if plus else None, requested,
                    decision.user)

    def _resolve_dom0_path(self, path: PurePosixPath) -> Path:
        return qube_dir(self.root, ADMIN) / path.relative_to("/")

    def _service_env(self, call: Call, identity: Identity) -> dict[str, str]:
        env = environment(self.root, self.config, call.target, identity)
        env = {k: v for k, v in env.items() if not k.startswith("QREXEC")}
        env["QREXEC_REMOTE_DOMAIN"] = call.source.name
        env["QREXEC_SERVICE_FULL_NAME"] = self._full_name(call)
        if call.argument is not None:
            env["QREXEC_SERVICE_ARGUMENT"] = call.argument
        if call.target.name == ADMIN:
            # "dom0" stays a name; "", unknown names and keywords become keywords
            requested = (ADMIN if call.requested == ADMIN
                         else policy.intended_target(call.requested, self.system))
            if requested.startswith("@"):
                env["QREXEC_REQUESTED_TARGET_TYPE"] = "keyword"
                env["QREXEC_REQUESTED_TARGET_KEYWORD"] = requested[1:]
            else:
                env["QREXEC_REQUESTED_TARGET_TYPE"] = "name"
                env["QREXEC_REQUESTED_TARGET"] = requested
        else:
            env["QREXEC_REQUESTED_TARGET_TYPE"] = ""
        return env

    def _run_identity(self, call: Call) -> Identity:
        if call.user in (None, "user", "DEFAULT"):
            return self.identities[call.target.name]
        if call.user == "root":
            return Identity(0, 0, "root")
        raise CallFailed(Frame.FAIL, "unknown user", f"user={call.user} is not simulated")

    async def _spawn(self, call: Call, path: Path) -> tuple[
            asyncio.subprocess.Process, socket.socket, socket.socket]:
        identity = self._run_identity(call)
        argv = [str(path)]
        if call.argument:
            argv.append(call.argument)
        if path.is_socket():
            argv = [self.config.python, "-m", "qsf_sim.socket_service", str(path),
                    self._full_name(call), call.source.name]
        if self.config.private_home:
            argv = namespace_prefix(self.root, call.target, identity) + argv
            as_user = {}
        else:
            as_user = popen_identity(identity)
        env = self._service_env(call, identity)
        pass_fds: list[int] = []
        if call.target.name == ADMIN and self.tty_fd is not None:
            env[TTY_FD_VARIABLE] = str(self.tty_fd)
            pass_fds.append(self.tty_fd)
        to_service, service_stdin = socket.socketpair()
        from_service, service_stdout = socket.socketpair()
        log_fd = os.open(log_path(self.root, call.target.name),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=service_stdin.fileno(), stdout=service_stdout.fileno(), stderr=log_fd,
                env=env, pass_fds=pass_fds, start_new_session=True,
                cwd="/" if self.config.private_home else qube_home(self.root, call.target.name),
                **as_user)
        except OSError as error:
            to_service.close()
            from_service.close()
            raise CallFailed(Frame.FAIL, "cannot start service", f"{path}: {error}") from None
        finally:
            service_stdin.close()
            service_stdout.close()
            os.close(log_fd)
        self.children.add(process)
        return process, to_service, from_service

    async def _join(self, call: Call, process: asyncio.subprocess.Process,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    to_service: socket.socket, from_service: socket.socket) -> None:
        # The transports own the sockets from here: close them only through the transports.
        _, in_writer = await asyncio.open_unix_connection(sock=to_service)
        out_reader, out_writer = await asyncio.open_unix_connection(sock=from_service)

        async def upstream() -> None:
            """Caller's frames to the service's stdin; ends only by raising (caller gone)."""
            service_reading = True
            while (received := await read_frame_async(reader)) is not None:
                kind, payload = received
                if kind == Frame.EOF and service_reading:
                    with contextlib.suppress(OSError):
                        in_writer.write_eof()  # the half-close
                    service_reading = False
                elif kind != Frame.DATA or not payload:
                    raise ProtocolViolation(f"unexpected {kind.name} frame")
                elif service_reading:
                    try:
                        in_writer.write(payload)
                        await in_writer.drain()
                    except ConnectionError:
                        service_reading = False  # it closed its stdin: drop the rest
            raise ConnectionResetError("the caller went away")

        async def downstream() -> None:
            """The service's stdout, its EOF, then its exit status."""
            while chunk := await out_reader.read(MAX_PAYLOAD):
                writer.write(frame(Frame.DATA, chunk))
                await writer.drain()
            writer.write(frame(Frame.EOF))
            await writer.drain()
            status = exit_status(await process.wait())
            writer.write(frame(Frame.EXIT, EXIT_STATUS.pack(status)))
            await writer.drain()
            log.info("%s -> %s %s: exit %d", call.source.name, call.target.name,
                     self._full_name(call), status)

        up = asyncio.create_task(upstream())
        down = asyncio.create_task(downstream())
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    log.info("%s -> %s: call ended early: %s", call.source.name,
                             call.target.name, error)
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            in_writer.close()
            out_writer.close()
            await self._reap(process)

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        """Wait for a service whose caller is gone; stop it if it lingers."""
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            await _kill_group(process)
        self.children.discard(process)

    async def _kill_children(self) -> None:
        await asyncio.gather(*(_kill_group(p) for p in list(self.children)))


async def _drain_caller(reader: asyncio.StreamReader) -> None:
    while (received := await read_frame_async(reader)) is not None:
        if received[0] == Frame.EOF:
            return


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            continue


def run(root: Path, ready_fd: int | None = None) -> int:
    """Run the daemon for a simulator root that `setup` prepared."""
    config = SimConfig.load(root)
    daemon = Daemon(root, config)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    asyncio.run(daemon.serve(ready))
    return 0
