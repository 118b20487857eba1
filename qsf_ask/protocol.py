"""The qsf.AskFolderAccess exchange: dom0's question and the GUI domain's one-line answer.

dom0 writes the request, one `KEY VALUE` line each, in this order, then EOF:

    client NAME        the qube that asks (validated qube name)
    label COLOUR       its Qubes label: red orange yellow green gray blue purple black
    server NAME        the qube that has the folder
    folder BASE64      the folder's bytes (absolute, normalised, <= 4096 bytes)
    mode ro|rw         the access asked for
    choices C,C,...    what the dialog may offer, from CHOICES (no allow-always
                       for a disposable client)

The agent answers one line: `allow-once ro|rw`, `allow-always ro|rw`, `deny-once`,
`deny-always`, `block`, or `busy` (another dialog is open). Anything else, or
nothing, counts for dom0 as "no dialog could be shown".

A socket service is reached through qrexec, which first writes a header
`SERVICE[+ARG] SOURCE[ ...]\\0` (from dom0 itself: `qsf.AskFolderAccess dom0 name
dom0\\0`); the agent reads it and accepts only SOURCE dom0.

Both ends import this module: dom0 (qsf_dom0.ask) to write and parse, the agent
to parse as untrusted. qsf_ask may import only the stdlib and gi, so the few
validators it needs are here rather than imported from qsf_dom0.wire; the test
tests/ask/test_ask_protocol.py checks that both accept exactly the same names and
folders.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

SERVICE: Final = "qsf.AskFolderAccess"
SOURCE: Final = "dom0"

QUBE_NAME_RE: Final = re.compile(rb"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
DISPOSABLE_RE: Final = re.compile(r"\Adisp[0-9]+\Z")
MAX_PATH: Final = 4096
MAX_HEADER: Final = 256
# The longest request: every line at its longest.
MAX_REQUEST: Final = 1024 + 4 * ((MAX_PATH + 2) // 3)
MAX_ANSWER: Final = 32

# Qubes' labels and their colours (qubes-core-admin's default labels).
LABELS: Final = {
    "red": "#cc0000",
    "orange": "#f57900",
    "yellow": "#edd400",
    "green": "#73d216",
    "gray": "#555753",
    "blue": "#3465a4",
    "purple": "#75507b",
    "black": "#000000",
}
CHOICES: Final = ("allow-once", "allow-always", "deny-once", "deny-always", "block")
ALLOWING: Final = ("allow-once", "allow-always")
MODES: Final = ("ro", "rw")
BUSY: Final = "busy"
KEYS: Final = ("client", "label", "server", "folder", "mode", "choices")


class InvalidRequest(ValueError):
    """The request (or answer) is malformed; the message says how."""


@dataclass(frozen=True, slots=True)
class AskRequest:
    """A validated question. `choices` keeps CHOICES' order."""

    client: str
    label: str
    server: str
    folder: bytes
    mode: str
    choices: tuple[str, ...]

    @property
    def disposable(self) -> bool:
        return is_disposable(self.client)


@dataclass(frozen=True, slots=True)
class AskAnswer:
    choice: str  # one of CHOICES
    mode: str  # ro or rw; ro for every deny


def is_disposable(name: str) -> bool:
    return DISPOSABLE_RE.match(name) is not None


def qube_name(untrusted_name: bytes) -> str:
    if not QUBE_NAME_RE.match(untrusted_name):
        raise InvalidRequest("malformed qube name")
    return untrusted_name.decode("ascii")


def folder_path(untrusted_path: bytes) -> bytes:
    """Absolute, normalised, no NUL, no `.` or `..`, at most MAX_PATH bytes."""
    if len(untrusted_path) > MAX_PATH:
        raise InvalidRequest("path too long")
    if not untrusted_path.startswith(b"/"):
        raise InvalidRequest("path not absolute")
    if b"\0" in untrusted_path:
        raise InvalidRequest("NUL in path")
    if untrusted_path != b"/" and any(
        c in (b"", b".", b"..") for c in untrusted_path[1:].split(b"/")
    ):
        raise InvalidRequest("path not normalised")
    return untrusted_path


def decode_folder(untrusted_line: bytes) -> bytes:
    try:
        untrusted_path = base64.b64decode(untrusted_line, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("malformed base64") from None
    if base64.b64encode(untrusted_path) != untrusted_line:
        raise InvalidRequest("non-canonical base64")
    return folder_path(untrusted_path)


def display_path(path: bytes) -> str:
    """A folder as text safe to show: undecodable bytes and controls escaped.

    The same escaping as qsf_dom0.prompt.display_path (the terminal prompt), so
    the user reads the same folder in either place.
    """
    text = path.decode("utf-8", "backslashreplace")
    return "".join(
        char if unicodedata.category(char)[0] not in "CZ" or char == " " else f"\\u{ord(char):04x}"
        for char in text
    )


def encode_request(request: AskRequest) -> bytes:
    """The request as dom0 writes it (the values are validated again on the way)."""
    folder = base64.b64encode(folder_path(request.folder)).decode("ascii")
    values = (qube_name(request.client.encode()), _label(request.label.encode()),
              qube_name(request.server.encode()), folder, _mode(request.mode.encode()),
              ",".join(_choices(",".join(request.choices).encode(), request.client)))
    return "".join(f"{key} {value}\n" for key, value in zip(KEYS, values, strict=True)).encode()


def decode_request(untrusted_data: bytes) -> AskRequest:
    """A validated request from the bytes after the header (hostile until proven)."""
    if len(untrusted_data) > MAX_REQUEST:
        raise InvalidRequest("request too long")
    if not untrusted_data.endswith(b"\n"):
        raise InvalidRequest("request does not end with a newline")
    untrusted_lines = untrusted_data[:-1].split(b"\n")
    if len(untrusted_lines) != len(KEYS):
        raise InvalidRequest(f"request must have {len(KEYS)} lines")
    untrusted_values = []
    for key, untrusted_line in zip(KEYS, untrusted_lines, strict=True):
        prefix = key.encode() + b" "
        if not untrusted_line.startswith(prefix):
            raise InvalidRequest(f"expected the {key} line")
        untrusted_values.append(untrusted_line[len(prefix):])
    client = qube_name(untrusted_values[0])
    server = qube_name(untrusted_values[2])
    if client == server:
        raise InvalidRequest("client and server are the same qube")
    return AskRequest(
        client=client,
        label=_label(untrusted_values[1]),
        server=server,
        folder=decode_folder(untrusted_values[3]),
        mode=_mode(untrusted_values[4]),
        choices=_choices(untrusted_values[5], client),
    )


def _label(untrusted_label: bytes) -> str:
    label = untrusted_label.decode("ascii", "replace")
    if label not in LABELS:
        raise InvalidRequest("unknown label")
    return label


def _mode(untrusted_mode: bytes) -> str:
    mode = untrusted_mode.decode("ascii", "replace")
    if mode not in MODES:
        raise InvalidRequest("mode must be ro or rw")
    return mode


def _choices(untrusted_choices: bytes, client: str) -> tuple[str, ...]:
    names = untrusted_choices.decode("ascii", "replace").split(",")
    if len(set(names)) != len(names) or any(n not in CHOICES for n in names):
        raise InvalidRequest("unknown or repeated choice")
    if "deny-once" not in names:
        raise InvalidRequest("deny-once must be offered")
    if is_disposable(client) and "allow-always" in names:
        raise InvalidRequest("allow-always offered to a disposable qube")
    return tuple(c for c in CHOICES if c in names)


def parse_header(untrusted_header: bytes) -> tuple[str, str]:
    """(service, source) from qrexec's `SERVICE[+ARG] SOURCE[ ...]` header (without NUL)."""
    untrusted_words = untrusted_header.split(b" ")
    if len(untrusted_words) < 2:
        raise InvalidRequest("malformed header")
    service = untrusted_words[0].decode("ascii", "replace").partition("+")[0]
    return service, qube_name(untrusted_words[1])


def header(source: str = SOURCE) -> bytes:
    """The header qrexec writes when dom0 calls the socket service locally."""
    return f"{SERVICE} {source} name {source}\0".encode("ascii")


def encode_answer(answer: AskAnswer | None) -> bytes:
    """The answer line; None is `busy`."""
    if answer is None:
        return BUSY.encode() + b"\n"
    if answer.choice in ALLOWING:
        return f"{answer.choice} {answer.mode}\n".encode()
    return f"{answer.choice}\n".encode()


def decode_answer(untrusted_line: bytes, request: AskRequest) -> AskAnswer | None:
    """The agent's answer (None: busy). A choice not offered, or rw for a ro request, is
    malformed: the agent must never send one."""
    if len(untrusted_line) > MAX_ANSWER or not untrusted_line.endswith(b"\n"):
        raise InvalidRequest("answer not one short line")
    untrusted_words = untrusted_line[:-1].decode("ascii", "replace").split(" ")
    if untrusted_words == [BUSY]:
        return None
    choice = untrusted_words[0]
    if choice not in request.choices:
        raise InvalidRequest("answer is not a choice that was offered")
    if choice in ALLOWING:
        if len(untrusted_words) != 2 or untrusted_words[1] not in MODES:
            raise InvalidRequest("an allow answer needs ro or rw")
        mode = untrusted_words[1]
        if request.mode == "ro" and mode == "rw":
            raise InvalidRequest("answer upgrades a read-only request")
        return AskAnswer(choice, mode)
    if len(untrusted_words) != 1:
        raise InvalidRequest("a deny answer has no mode")
    return AskAnswer(choice, "ro")
