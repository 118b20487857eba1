"""The hostile-server fuzzer (fuse_fuzz.py): fixed seeds here, thousands behind `slow`.

    QSF_FUZZ_SEED=S pytest tests/fuse/test_fuse_fuzz.py -k qsf    # replay one seed
    QSF_FUZZ_SESSIONS=N make fuzz-fuse                            # the long run

Every session checks the invariants listed in fuse_fuzz.py; a failure prints
the seed and the command that replays it.
"""

from __future__ import annotations

import os
import shutil

import fuse_fuzz
import fuzz_proxy
import pytest
import support
from fuse_mounts import Server

pytestmark = pytest.mark.fuse

# Seeds of the short run (random plans), and test_every_mutation for each kind.
SHORT = {"qsf": range(16), "diod": range(6)}
LONG = {"qsf": 5000, "diod": 1000}


def _server(name: str) -> Server:
    support.need_fuse()
    support.need_program("fusermount")
    for program in ("getfattr", "setfattr", "truncate"):
        support.need_program(program)
    if name == "diod":
        support.need_program("diod")
    return Server(name)


def _cases() -> list[object]:
    replay = os.environ.get("QSF_FUZZ_SEED")
    cases: list[object] = []
    for name, seeds in SHORT.items():
        marks = [pytest.mark.diod] if name == "diod" else []
        for seed in [int(replay)] if replay else seeds:
            cases.append(pytest.param(name, seed, id=f"{name}-{seed}", marks=marks))
    return cases


@pytest.mark.parametrize(("name", "seed"), _cases())
def test_fuzz_session(name: str, seed: int) -> None:
    session = fuse_fuzz.run_session(_server(name), seed)
    assert not session.problems, session.describe()


@pytest.mark.parametrize("kind", sorted(fuzz_proxy.KINDS))
def test_every_mutation(kind: str) -> None:
    """Each kind of mutation on one reply early in a session of all the programs."""
    reply = 4 + sorted(fuzz_proxy.KINDS).index(kind) % 12
    session = fuse_fuzz.run_session(_server("qsf"), reply, plan=f"{reply}:{kind}")
    assert not session.problems, session.describe()
    assert [k for _, k in session.mutations()] == [kind], session.describe()


# Regressions (issue 11), with the proxy's mutation fixed: a reply on a tag that
# nobody waits on (a duplicate, another tag, an unsolicited one) while reads and
# writes keep the writer busy. Before the fix the client died of trio.EndOfChannel
# in its writer, leaving a mount that `fusermount -u` refused (EINVAL), or lived
# on after the unmount.
BUSY = tuple(f"dd if=/dev/zero of=$M/out{i} bs=1M count=8 oflag=direct" for i in range(8))


@pytest.mark.parametrize("plan", ["40:duplicate", "60:tag-random", "30:tag-inflight",
                                  "50:unsolicited"])
def test_broken_connection_under_load_unmounts_and_exits(plan: str) -> None:
    session = fuse_fuzz.run_session(_server("qsf"), 0, plan=plan, parallel=BUSY, keep=True)
    try:
        assert session.mounted
        assert not session.problems, session.describe()
        assert "no request is waiting on" in session.log.read_text(), session.describe()
    finally:
        shutil.rmtree(session.workdir, ignore_errors=True)


# Regression (issue 11): a listing that never ends, of names that are gone when
# the client looks them up. The client kept every entry (300 MB in 20 s), and
# one readdir call looped for ever: `ls` could not be killed, nor the client
# end after `fusermount -u`. Now a readdir call that resolves nothing in a
# request timeout fails with EIO, and an open directory keeps 8 bytes an entry.
@pytest.mark.parametrize("name", ["qsf", pytest.param("diod", marks=pytest.mark.diod)])
def test_endless_listing_of_vanished_names_fails_in_bounded_time(name: str) -> None:
    session = fuse_fuzz.run_session(_server(name), 0, plan="3:endless",
                                    parallel=("ls -lR $M >/dev/null",), keep=True)
    try:
        assert session.mounted
        assert not session.problems and not session.overran, session.describe()
        assert session.report.get("endless_entries"), session.describe()
        assert "no entry of the listing resolved" in session.log.read_text(), \
            session.describe()
    finally:
        shutil.rmtree(session.workdir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(0)
@pytest.mark.parametrize("name", ["qsf", pytest.param("diod", marks=pytest.mark.diod)])
def test_fuzz_long(name: str) -> None:
    count = int(os.environ.get("QSF_FUZZ_SESSIONS", LONG[name]))
    first = int(os.environ.get("QSF_FUZZ_FIRST_SEED", 100_000))
    server = _server(name)
    failures = []
    for seed in range(first, first + count):
        session = fuse_fuzz.run_session(server, seed)
        if session.problems:
            failures.append(session.describe())
            if len(failures) >= 5:
                break
    assert not failures, "\n\n".join(failures)
