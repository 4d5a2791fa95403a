"""Large requests are decoded off the event loop (issue 22).

Measured on this project's 2-core machine: a 4 MB Track of 10,000 fields took 0.17 s to count, 0.02 s
to parse and 0.07 s to convert, all on the event loop; eight such calls in flight held every other
call (a kubelet health Check included) for over a second. Requests over OFFLOAD_BYTES are now parsed
and converted on a small pool of threads: the loop keeps answering, since pure-Python work gives up
the GIL every few milliseconds and the parse itself is bounded by ``maxEventFields`` (field_budget.py).
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
# Two: enough to keep both cores busy, few enough that the threads leave the loop its share of the GIL.
_POOL = ThreadPoolExecutor(2, thread_name_prefix="sidecar-decode")


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
