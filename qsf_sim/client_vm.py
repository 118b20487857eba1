"""qrexec-client-vm for a simulated qube: the real one's arguments, stdio and exit codes.

    qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]

Each qube's bin/qrexec-client-vm runs `python -m qsf_sim.client_vm --sim-socket SOCKET ...`
with the socket of its qube; in a QEMU guest, $QSF_SIM_QREXEC_SOCKET names the guest end
of qsf_sim.mux instead. Who the caller is comes from the socket alone (the daemon checks
the peer's uid with SO_PEERCRED), so neither can be used to pose as another qube.

Exit status: the service's (or LOCAL_PROGRAM's; 128+N when
killed by signal N), 126 refused ("Request refused" on stderr), 127 no such service,
125 any other failure, 2 usage error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from qsf_sim.protocol import (
    EXIT_STATUS,
    MAX_PAYLOAD,
    Frame,
    ProtocolViolation,
    frame,
    read_frame,
    request_payload,
)

EXIT_FAILED = 125
EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127
EXIT_USAGE = 2
# Without --sim-socket: the socket named here (a QEMU guest's end of qsf_sim.mux).
SOCKET_ENV = "QSF_SIM_QREXEC_SOCKET"

USAGE = """\
usage: qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]

Call SERVICE (with argument ARG) in qube TARGET, as dom0's policy allows. Without
LOCAL_PROGRAM the service's stdin/stdout are this program's; with it, they are joined
to LOCAL_PROGRAM's stdin/stdout through socketpairs (the original fds 0 and 1 are
passed as SAVED_FD_0 and SAVED_FD_1).

options:
  -h, --help                        show this help
  --buffer-size=N                   accepted, ignored
  -t, --filter-escape-chars-stdout  replace control characters in the service's output
  --no-filter-escape-chars-stdout   do not (the default unless stdout is a terminal)
  -T, --filter-escape-chars-stderr, --no-filter-escape-chars-stderr
                                    accepted (service stderr stays in the target qube)
"""
PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"
FILTER_TABLE = bytes(b if b in PRINTABLE else ord("_") for b in range(256))


class UsageError(Exception):
    pass


@dataclass
class Options:
    socket_path: str
    target: str
    service: str
    local_program: list[str]
    filter_stdout: bool


def parse_args(argv: Sequence[str]) -> Options:
    args = list(argv)
    socket_path = ""
    if len(args) >= 2 and args[0] == "--sim-socket":
        socket_path = args[1]
        del args[:2]
    filter_stdout: bool | None = None
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "--":
            break
        if option in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if option in ("-t", "--filter-escape-chars-stdout"):
            filter_stdout = True
        elif option == "--no-filter-escape-chars-stdout":
            filter_stdout = False
        elif option in ("-T", "--filter-escape-chars-stderr", "--no-filter-escape-chars-stderr"):
            pass
        elif option.startswith("--buffer-size="):
            if not option.partition("=")[2].isdigit():
                raise UsageError(f"invalid {option}")
        else:
            raise UsageError(f"unknown option {option}")
    if len(args) < 2:
        raise UsageError("TARGET and SERVICE are required")
    socket_path = socket_path or os.environ.get(SOCKET_ENV, "")
    if not socket_path:
        raise UsageError(f"no --sim-socket nor {SOCKET_ENV} (run the qube's bin/qrexec-client-vm)")
    target, service, *local = args
    if filter_stdout is None:
        filter_stdout = not local and os.isatty(1)
    return Options(socket_path, target, service, local, filter_stdout)


def fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"qrexec-client-vm: {message}", file=sys.stderr)
    return status


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def half_close(fd: int) -> None:
    """Pass EOF on: shut down a socket's sending side, or close a pipe or file."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def send_input(conn: socket.socket, fd: int) -> None:
    """fd's bytes to the service as DATA frames, then EOF (runs in a thread)."""
    try:
        while chunk := os.read(fd, MAX_PAYLOAD):
            conn.sendall(frame(Frame.DATA, chunk))
        conn.sendall(frame(Frame.EOF))
    except OSError:
        pass  # the call is over or the daemon is gone: the receiving side reports it


def receive_output(conn: socket.socket, fd: int, filter_escapes: bool) -> int | None:
    """The service's output into fd until its exit status (None if the daemon vanished)."""
    writable = True
    while True:
        received = read_frame(conn)
        if received is None:
            return None
        kind, payload = received
        if kind == Frame.DATA and writable:
            try:
                write_all(fd, payload.translate(FILTER_TABLE) if filter_escapes else payload)
            except BrokenPipeError:
                writable = False
        elif kind == Frame.EOF and writable:
            half_close(fd)
            writable = False
        elif kind == Frame.EXIT and len(payload) == EXIT_STATUS.size:
            if writable:
                half_close(fd)
            return int(EXIT_STATUS.unpack(payload)[0])
        elif kind not in (Frame.DATA, Frame.EOF):
            raise ProtocolViolation(f"unexpected {kind.name} frame")


def start_local_program(argv: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start LOCAL_PROGRAM on two socketpairs: (process, fd to read from, fd to write to)."""
    to_program, program_stdin = socket.socketpair()
    from_program, program_stdout = socket.socketpair()
    saved = [os.dup(0), os.dup(1)]
    env = dict(os.environ, SAVED_FD_0=str(saved[0]), SAVED_FD_1=str(saved[1]))
    try:
        process = subprocess.Popen(argv, stdin=program_stdin.fileno(),
                                   stdout=program_stdout.fileno(), env=env, pass_fds=saved)
    finally:
        for fd in saved:
            os.close(fd)
        program_stdin.close()
        program_stdout.close()
    return process, from_program.detach(), to_program.detach()


def call(options: Options) -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(options.socket_path)
        conn.sendall(frame(Frame.REQUEST, request_payload(options.target, options.service)))
        reply = read_frame(conn)
    except (OSError, ProtocolViolation) as error:
        return fail(f"cannot reach the qrexec daemon: {error}")
    if reply is None:
        return fail("the qrexec daemon closed the connection")
    kind, payload = reply
    if kind == Frame.REFUSE:
        print("Request refused", file=sys.stderr)
        return EXIT_REFUSED
    if kind == Frame.NOSERVICE:
        return fail(f"service {options.service} not found in {options.target}", EXIT_NO_SERVICE)
    if kind != Frame.ACCEPT:
        return fail(payload.decode("ascii", "replace") or "call failed")

    process = None
    if options.local_program:
        try:
            process, input_fd, output_fd = start_local_program(options.local_program)
        except OSError as error:
            return fail(f"cannot run {options.local_program[0]}: {error}")
    else:
        input_fd, output_fd = 0, 1
    threading.Thread(target=send_input, args=(conn, input_fd), daemon=True).start()
    try:
        status = receive_output(conn, output_fd, options.filter_stdout)
    except (OSError, ProtocolViolation) as error:
        status = None
        print(f"qrexec-client-vm: connection lost: {error}", file=sys.stderr)
    if process is not None:
        local = process.wait()
        return 128 - local if local < 0 else local
    return EXIT_FAILED if status is None else status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        sys.stderr.write(USAGE)
        return fail(str(error), EXIT_USAGE)
    return call(options)


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    os._exit(status)  # the input thread may still block on a read that never ends
