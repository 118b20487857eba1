"""Host side of the rig: the target of the mux's host end in tests without qsf_sim.

Every stream from the guest starts with one line naming a service registered
here; the hub starts that service's argv with the connection as its stdin and
stdout, as qrexec starts a service, and keeps the process for the test.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

MAX_NAME = 128


class ServiceHub:
    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self._services: dict[str, list[str]] = {}
        self.processes: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def register(self, name: str, argv: list[str]) -> None:
        with self._lock:
            self._services[name] = argv
            self.processes.setdefault(name, [])

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._start, args=(connection,), daemon=True).start()

    def _start(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            name = b""
            try:
                while not name.endswith(b"\n") and len(name) <= MAX_NAME:
                    byte = connection.recv(1)
                    if not byte:
                        return
                    name += byte
            except OSError:
                return
            connection.settimeout(None)
            with self._lock:
                argv = self._services.get(name.strip().decode(errors="replace"))
                if argv is None:
                    return
                with open(self.log, "ab") as log:
                    process = subprocess.Popen(argv, stdin=connection, stdout=connection,
                                               stderr=log)
                self.processes[name.strip().decode()].append(process)

    def close(self) -> None:
        self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for processes in self.processes.values():
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                    process.wait()
