"""struct/memoryview codec for the hot messages (filled in next)."""

from __future__ import annotations

from collections.abc import Callable

from .messages import Message

# type number -> body decoder (raises ValueError on a malformed body)
DECODERS: dict[int, Callable[[memoryview], Message]] = {}
# message class -> whole-frame encoder (raises ValueError)
ENCODERS: dict[type[Message], Callable[[int, Message], bytes]] = {}
