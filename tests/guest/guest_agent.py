"""Control agent run inside the test guest (as root, chrooted into the host's root).

It reads one JSON request per line from the virtio-serial port given as argv[1],
runs the command and answers one JSON line: exit status and captured output.
Output goes through temporary files, so a command that leaves a background
process behind (a mount's relay) does not hold the answer up.

Request:  {"argv": [...], "stdin": b64|null, "timeout": s, "env": {...}|null, "cwd": str|null}
Answer:   {"rc": int, "stdout": b64, "stderr": b64, "timed_out": bool}
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

MAX_OUTPUT = 16 << 20


def run(request: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(request.get("env") or {})
    stdin_data = base64.b64decode(request["stdin"]) if request.get("stdin") else b""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as inp:
        inp.write(stdin_data)
        inp.seek(0)
        timed_out = False
        try:
            proc = subprocess.Popen(request["argv"], stdin=inp, stdout=out, stderr=err,
                                    env=env, cwd=request.get("cwd"), start_new_session=True)
        except OSError as error:
            return {"rc": 127, "stdout": "", "timed_out": False,
                    "stderr": base64.b64encode(f"agent: {error}\n".encode()).decode()}
        try:
            rc = proc.wait(timeout=request.get("timeout") or 60)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        answer: dict[str, Any] = {"rc": rc, "timed_out": timed_out}
        for key, stream in (("stdout", out), ("stderr", err)):
            stream.seek(0)
            answer[key] = base64.b64encode(stream.read(MAX_OUTPUT)).decode()
    return answer


def main() -> None:
    port = os.open(sys.argv[1], os.O_RDWR)
    buffer = b""
    while True:
        chunk = os.read(port, 65536)
        if not chunk:  # the host end is not connected (yet)
            time.sleep(0.2)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                answer = run(json.loads(line))
            except Exception as error:  # a bad request must not kill the agent
                answer = {"rc": 125, "stdout": "", "timed_out": False,
                          "stderr": base64.b64encode(f"agent: {error!r}\n".encode()).decode()}
            data = json.dumps(answer).encode() + b"\n"
            while data:
                data = data[os.write(port, data):]


if __name__ == "__main__":
    main()
