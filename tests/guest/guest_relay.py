"""In the guest, what qrexec-client-vm + qvm-mount-folder --backend=kernel do.

Connects to the guest end of the mux, names the host service to reach with one
line (the test hub on the host dispatches on it), mounts the channel with
qsf_kmount through a socketpair, prints the relay's pid and stays in the
background relaying between the socketpair and the mux connection until both
directions end (umount, or the server going away). Like qrexec-client-vm, the
relay runs from before the mount (mount itself talks 9P) until both ends close.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading

import qsf_kmount

parser = argparse.ArgumentParser()
parser.add_argument("--socket", required=True, help="the guest end of the mux")
parser.add_argument("--service", required=True, help="token of the host service")
parser.add_argument("--source", required=True)
parser.add_argument("--mountpoint", required=True)
parser.add_argument("-o", "--options", default="")


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def main() -> int:
    options = parser.parse_args()
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.connect(options.socket)
    upstream.sendall(options.service.encode() + b"\n")
    mine, kernels = socket.socketpair()
    relay = os.fork()
    if relay == 0:  # the relay runs from the start: mount itself needs the channel
        os.setsid()
        kernels.close()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        threads = [threading.Thread(target=pump, args=(mine, upstream)),
                   threading.Thread(target=pump, args=(upstream, mine))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        os._exit(0)
    mine.close()
    upstream.close()
    try:
        qsf_kmount.mount(kernels.fileno(), kernels.fileno(), options.source,
                         options.mountpoint, options=options.options)
    except qsf_kmount.KmountError as error:
        print(f"guest_relay: {error}", file=sys.stderr)
        return 1
    finally:
        kernels.close()
    print(relay, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
