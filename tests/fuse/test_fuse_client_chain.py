"""P9Client.call_chain: requests sent back to back, answered each on its own."""

from __future__ import annotations

import errno

import trio
from test_fuse_client import QID, connect, getattr_reply

from qsf_fuse.client import CallTimeout, P9Error
from qsf_p9 import constants as c
from qsf_p9 import messages as m


async def test_both_requests_leave_before_any_reply() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        results: list[m.Message | P9Error] = []

        async def chain() -> None:
            results.extend(await client.call_chain(
                [m.Tlcreate(1, b"f", c.L_O_RDWR, 0o644, 0), m.Tgetattr(1, c.GETATTR_BASIC)]
            ))

        nursery.start_soon(chain)
        # Both arrive although the first is not answered yet.
        create_tag, create = await server.request()
        getattr_tag, getattr_ = await server.request()
        assert isinstance(create, m.Tlcreate) and isinstance(getattr_, m.Tgetattr)
        await server.reply(getattr_tag, getattr_reply(7))  # answers in any order
        await server.reply(create_tag, m.Rlcreate(QID, 0))
        await client.quiesce()
        await trio.testing.wait_all_tasks_blocked()
        assert results == [m.Rlcreate(QID, 0), getattr_reply(7)]
        nursery.cancel_scope.cancel()


async def test_each_failure_is_returned_in_its_place() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        results: list[m.Message | P9Error] = []

        async def chain() -> None:
            results.extend(await client.call_chain(
                [m.Tlcreate(1, b"f", c.L_O_RDWR, 0o644, 0), m.Tgetattr(1, c.GETATTR_BASIC)]
            ))

        nursery.start_soon(chain)
        create_tag, _ = await server.request()
        getattr_tag, _ = await server.request()
        await server.reply(create_tag, m.Rlerror(errno.EEXIST))
        await server.reply(getattr_tag, m.Rclunk())  # wrong type for a Tgetattr
        await client.quiesce()
        await trio.testing.wait_all_tasks_blocked()
        assert [getattr(r, "errno", None) for r in results] == [errno.EEXIST, errno.EIO]
        nursery.cancel_scope.cancel()


async def test_unanswered_requests_time_out_and_are_flushed() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery, timeout=0.2)
        results: list[m.Message | P9Error] = []

        async def chain() -> None:
            results.extend(await client.call_chain(
                [m.Tgetattr(1, c.GETATTR_BASIC), m.Tgetattr(2, c.GETATTR_BASIC)]
            ))

        nursery.start_soon(chain)
        first_tag, _ = await server.request()
        second_tag, _ = await server.request()
        await server.reply(first_tag, getattr_reply(1))
        flushes = []
        for _ in range(1):
            tag, flush = await server.request()
            assert isinstance(flush, m.Tflush)
            flushes.append(flush.oldtag)
            await server.reply(tag, m.Rflush())
        assert flushes == [second_tag]
        await client.quiesce()
        assert results[0] == getattr_reply(1)
        assert isinstance(results[1], CallTimeout)
        nursery.cancel_scope.cancel()


async def test_a_cancelled_chain_clunks_the_fid_its_walk_made() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        newfid = client.fids.allocate()
        with trio.CancelScope() as scope:

            async def answer_walk_then_cancel() -> None:
                walk_tag, walk = await server.request()
                assert isinstance(walk, m.Twalk) and walk.newfid == newfid
                await server.request()  # the Tgetattr, never answered
                await server.reply(walk_tag, m.Rwalk((QID,)))
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()

            nursery.start_soon(answer_walk_then_cancel)
            await client.call_chain([m.Twalk(0, newfid, (b"f",)), m.Tgetattr(newfid, 1)])
        assert scope.cancelled_caught
        # The unanswered getattr is flushed, and the walked fid clunked.
        seen: dict[type[m.Message], m.Message] = {}
        for _ in range(2):
            tag, request = await server.request()
            seen[type(request)] = request
            await server.reply(tag, m.Rflush() if isinstance(request, m.Tflush) else m.Rclunk())
        clunk = seen[m.Tclunk]
        assert isinstance(clunk, m.Tclunk) and clunk.fid == newfid
        assert m.Tflush in seen
        nursery.cancel_scope.cancel()
