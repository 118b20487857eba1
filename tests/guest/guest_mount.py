"""In the guest: mount a host service with qsf_kmount over a call through the mux.

Connects to the guest end of the mux, names the host service with one line (the
test hub on the host dispatches on it), then gives that very connection to the
kernel as its trans=fd channel. No relay process stays behind: the kernel holds
the connection until umount, which the server sees as EOF. (On a qube the
channel comes from qrexec-client-vm instead; test_guest_e2e covers that path.)
"""

from __future__ import annotations

import argparse
import socket
import sys

import qsf_kmount

parser = argparse.ArgumentParser()
parser.add_argument("--socket", required=True, help="the guest end of the mux")
parser.add_argument("--service", required=True, help="token of the host service")
parser.add_argument("--source", required=True)
parser.add_argument("--mountpoint", required=True)
parser.add_argument("-o", "--options", default="")


def main() -> int:
    options = parser.parse_args()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.connect(options.socket)
        channel.sendall(options.service.encode() + b"\n")
        try:
            qsf_kmount.mount(channel.fileno(), channel.fileno(), options.source,
                             options.mountpoint, options=options.options)
        except qsf_kmount.KmountError as error:
            print(f"guest_mount: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
