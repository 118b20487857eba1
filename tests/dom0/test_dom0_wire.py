"""Bounded reading and validation of the handshake lines."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsf_dom0 import wire


def reader(data: bytes) -> int:
    fd = os.memfd_create("input")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def test_read_line_stops_at_the_newline() -> None:
    fd = reader(b"vault\n\x00\x00\x00\x0bbinary 9P")
    try:
        assert wire.read_line(fd, 32) == b"vault"
        assert os.read(fd, 100) == b"\x00\x00\x00\x0bbinary 9P"  # nothing else consumed
    finally:
        os.close(fd)


@pytest.mark.parametrize(("data", "limit"), [(b"", 8), (b"abc", 8), (b"abcdefgh\n", 8)])
def test_read_line_refuses_eof_and_overflow(data: bytes, limit: int) -> None:
    fd = reader(data)
    try:
        with pytest.raises(wire.InvalidInput):
            wire.read_line(fd, limit)
        assert len(data) <= limit or os.lseek(fd, 0, os.SEEK_CUR) == limit  # read no further
    finally:
        os.close(fd)


def test_path_line_limit_fits_the_longest_path() -> None:
    longest = b"/" + b"a" * (wire.MAX_PATH - 1)
    line = wire.encode_path(longest)
    assert len(line) <= wire.MAX_PATH_LINE
    assert wire.decode_path(line[:-1]) == longest


@pytest.mark.parametrize("name", ["work", "a", "A-b_9", "x" * 31])
def test_good_qube_names(name: str) -> None:
    assert wire.qube_name(name.encode()) == name


@pytest.mark.parametrize(
    "name", ["", "9abc", "-work", "_x", "x" * 32, "wo rk", "work\n", "@anyvm", "$anyvm",
             "wörk", "work\0"],
)
def test_bad_qube_names(name: str) -> None:
    with pytest.raises(wire.InvalidInput):
        wire.qube_name(name.encode())


@pytest.mark.parametrize(
    "path",
    [b"", b"relative", b"//", b"/a/", b"/a//b", b"/./a", b"/a/.", b"/a/..", b"/a/../b",
     b"/a\0b", b"/" + b"a" * 4096],
)
def test_bad_paths(path: bytes) -> None:
    with pytest.raises(wire.InvalidInput):
        wire.decode_path(base64.b64encode(path))


@pytest.mark.parametrize("line", [b"L2E", b"L2E=\n", b"L2E= ", b"L2 E=", b"L2E==", b"-2E="])
def test_non_canonical_base64(line: bytes) -> None:
    with pytest.raises(wire.InvalidInput):
        wire.decode_path(line)


@pytest.mark.parametrize("path", [b"/", b"/a", b"/home/user/\xff\xfe name", b"/...", b"/a/.b"])
def test_good_paths_round_trip(path: bytes) -> None:
    assert wire.decode_path(wire.encode_path(path)[:-1]) == path


def test_within() -> None:
    assert wire.is_within(b"/a/b", b"/a")
    assert wire.is_within(b"/a", b"/a")
    assert wire.is_within(b"/anything", b"/")
    assert not wire.is_within(b"/ab", b"/a")
    assert not wire.is_within(b"/", b"/a")


@given(st.binary(max_size=200))
def test_decode_path_either_parses_or_refuses(untrusted: bytes) -> None:
    try:
        path = wire.decode_path(untrusted)
    except wire.InvalidInput:
        return
    assert path.startswith(b"/") and b"\0" not in path
    assert base64.b64encode(path) == untrusted


@given(st.binary(max_size=40))
def test_names_and_fingerprints_either_parse_or_refuse(untrusted: bytes) -> None:
    for check in (wire.qube_name, wire.fingerprint, wire.mode):
        try:
            value = check(untrusted)
        except wire.InvalidInput:
            continue
        assert value.encode() == untrusted
