"""qsf.AskFolderAccess on the wire: requests and answers, validated as hostile input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsf_ask import protocol
from qsf_ask.agent import split_input
from qsf_ask.protocol import AskAnswer, AskRequest, InvalidRequest
from qsf_dom0 import prompt, wire

REQUEST = AskRequest("work", "red", "vault", b"/home/user/Documents", "rw",
                     protocol.CHOICES)
WIRE = (b"client work\nlabel red\nserver vault\n"
        b"folder " + base64.b64encode(b"/home/user/Documents") + b"\nmode rw\n"
        b"choices allow-once,allow-always,deny-once,deny-always,block\n")


def test_encode_is_the_documented_format_and_round_trips() -> None:
    assert protocol.encode_request(REQUEST) == WIRE
    assert protocol.decode_request(WIRE) == REQUEST


def test_header_from_dom0_is_accepted_anything_else_refused() -> None:
    assert split_input(protocol.header() + WIRE) == REQUEST
    assert split_input(b"qsf.AskFolderAccess+ dom0\0" + WIRE) == REQUEST  # via qrexec-agent
    with pytest.raises(InvalidRequest, match="not dom0"):
        split_input(b"qsf.AskFolderAccess work\0" + WIRE)
    with pytest.raises(InvalidRequest, match="called as"):
        split_input(b"qubes.Other dom0\0" + WIRE)
    for bad in (WIRE, b"qsf.AskFolderAccess\0" + WIRE, b"x" * 300 + b"\0" + WIRE):
        with pytest.raises(InvalidRequest):
            split_input(bad)


@pytest.mark.parametrize(("old", "new"), [
    (b"client work", b"client -work"),
    (b"client work", b"client w\xc3\xa9rk"),
    (b"server vault", b"server work"),  # the same qube
    (b"label red", b"label pink"),
    (b"label red", b"label red;"),
    (b"mode rw", b"mode rwx"),
    (b"folder L2hv", b"folder L2hv="),  # not base64 of a path
    (b",block", b",block,block"),
    (b",block", b",shred"),
    (b"allow-once,allow-always,deny-once,", b"allow-once,allow-always,"),  # no deny-once
    (b"mode rw\n", b"mode rw\nextra line\n"),
    (b"client work\nlabel red", b"label red\nclient work"),
])
def test_malformed_requests_are_refused(old: bytes, new: bytes) -> None:
    assert old in WIRE
    with pytest.raises(InvalidRequest):
        protocol.decode_request(WIRE.replace(old, new))


def test_bad_folders_and_sizes_are_refused() -> None:
    for folder in (b"relative", b"/a/../b", b"/a//b", b"/a/", b"/a\0b", b"/" + b"x" * 4096):
        line = b"folder " + base64.b64encode(folder)
        data = WIRE.replace(b"folder " + base64.b64encode(b"/home/user/Documents"), line)
        with pytest.raises(InvalidRequest):
            protocol.decode_request(data)
    with pytest.raises(InvalidRequest, match="too long"):
        protocol.decode_request(WIRE + b"x" * protocol.MAX_REQUEST)
    with pytest.raises(InvalidRequest, match="newline"):
        protocol.decode_request(WIRE[:-1])


def test_a_disposable_is_never_offered_always() -> None:
    data = WIRE.replace(b"client work", b"client disp1234")
    with pytest.raises(InvalidRequest, match="disposable"):
        protocol.decode_request(data)
    request = protocol.decode_request(data.replace(b"allow-always,", b""))
    assert request.disposable and "allow-always" not in request.choices


def test_answers() -> None:
    decode = protocol.decode_answer
    assert decode(b"allow-once rw\n", REQUEST) == AskAnswer("allow-once", "rw")
    assert decode(b"allow-always ro\n", REQUEST) == AskAnswer("allow-always", "ro")
    assert decode(b"block\n", REQUEST) == AskAnswer("block", "ro")
    assert decode(b"busy\n", REQUEST) is None
    ro_request = AskRequest("work", "red", "vault", b"/x", "ro", ("allow-once", "deny-once"))
    for bad, request in [(b"allow-once rw\n", ro_request), (b"block\n", ro_request),
                         (b"allow-once\n", REQUEST), (b"deny-once ro\n", REQUEST),
                         (b"allow-once rw", REQUEST), (b"yes\n", REQUEST), (b"", REQUEST),
                         (b"deny-once\n" + b" " * 40, REQUEST)]:
        with pytest.raises(InvalidRequest):
            decode(bad, request)
    for answer in (AskAnswer("allow-once", "rw"), AskAnswer("deny-always", "ro"), None):
        assert decode(protocol.encode_answer(answer), REQUEST) == answer


# qsf_ask keeps its own copies of qsf_dom0's validators (it may not import qsf_dom0):
# they must accept exactly the same input.

def _accepts(function: object, value: bytes) -> bool:
    try:
        function(value)  # type: ignore[operator]
    except (InvalidRequest, wire.InvalidInput):
        return False
    return True


names = st.one_of(st.binary(max_size=40), st.from_regex(rb"\A[a-zA-Z][a-zA-Z0-9_-]{0,33}\Z"))
paths = st.one_of(st.binary(max_size=64), st.lists(
    st.sampled_from([b"a", b".", b"..", b"", b"\xff", b"\0", b"b c"]), max_size=6
).map(lambda parts: b"/" + b"/".join(parts)))


@given(names)
def test_qube_name_validators_agree(untrusted: bytes) -> None:
    assert _accepts(protocol.qube_name, untrusted) == _accepts(wire.qube_name, untrusted)


@given(paths)
def test_folder_validators_agree(untrusted: bytes) -> None:
    assert _accepts(protocol.folder_path, untrusted) == _accepts(wire.folder_path, untrusted)
    line = base64.b64encode(untrusted)
    assert _accepts(protocol.decode_folder, line) == _accepts(wire.decode_path, line)


@given(st.binary(max_size=64))
def test_display_path_is_the_terminal_prompts(path: bytes) -> None:
    assert protocol.display_path(path) == prompt.display_path(path)


def test_disposable_rule_agrees() -> None:
    for name in ("disp1", "disp", "disp12a", "work", "xdisp1"):
        assert protocol.is_disposable(name) == wire.is_disposable(name)
