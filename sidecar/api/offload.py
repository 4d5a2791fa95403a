"""Large requests are decoded off the event loop (issue 22).

Measured on this project's shared 2-core machine (benchmarks/stall.py): a 4 MB Track of 10,000
fields took 0.17 s to count, 0.02 s to parse and 0.07 s to convert; done on the event loop, eight
such calls in flight made a health Check wait 349 ms at the median and 586 ms at p99. Requests
over OFFLOAD_BYTES are now parsed and converted on a decoding thread: the loop keeps answering,
since pure-Python work gives up the GIL every few milliseconds and the parse itself is bounded by
``maxEventFields`` (field_budget.py).
Small requests, nearly all of them, are decoded where they arrive: a thread hop would cost them more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .field_budget import text_field

T = TypeVar("T")

OFFLOAD_BYTES = 16 * 1024
# One thread: the work holds the GIL, so a second decoder adds no speed, only a rival for the loop.
# Measured (benchmarks/stall.py, 8 wide Tracks in flight): with two, a health Check's p99 was 212 ms;
# with one, 47 ms, and more wide calls got done.
_POOL = ThreadPoolExecutor(1, thread_name_prefix="sidecar-decode")


class Deferred:
    """A request too large to parse on the event loop: its bytes, parsed later by ``parse()``."""

    __slots__ = ("data", "descriptor", "parse")

    def __init__(self, data: bytes, parse: Callable[[bytes], Any], descriptor: Any) -> None:
        self.data = data
        self.parse = parse
        self.descriptor = descriptor

    @property
    def id(self) -> str:
        """A Deliver item's id, for the answer to an item refused before it was parsed."""
        return text_field(self.data, self.descriptor, "id")


async def off_loop(request: Any, work: Callable[[Any], T], decode: Callable[[Any], Any]) -> T:
    """``work(decode(request))``: on the decoding threads for a Deferred request, here otherwise."""
    if isinstance(request, Deferred):
        return await in_pool(lambda: work(decode(request)))
    return work(decode(request))


async def in_pool(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, work)
