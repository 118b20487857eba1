"""Calls into the kernel that run in a worker thread and may never return."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import trio

R = TypeVar("R")

# trio 0.23 renamed run_sync's `cancellable` (Debian 12 has 0.22) to `abandon_on_cancel`.
_ABANDON = ("abandon_on_cancel"
            if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
            else "cancellable")


async def run_abandoning(function: Callable[..., R], *args: Any) -> R:
    """`function(*args)` in a worker thread; on cancellation the thread is left
    to finish alone (a kernel call that never returns must not keep us)."""
    run_sync: Callable[..., Any] = trio.to_thread.run_sync
    result: R = await run_sync(function, *args, **{_ABANDON: True})
    return result
