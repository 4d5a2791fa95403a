"""Memory of the contact cache, measured in-process with tracemalloc.

Keys and values look like the sidecar's: ``"e:user123456@example.com"`` (what transform.cache_key
makes of an e-mail) to a ContactRecord of an id above 2**31 (Trengo's contact ids are) and the name
the sidecar last wrote (``"Customer 123456"``). Keys and values are built inside the measured
region, because the cache is what keeps them alive in the sidecar.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sidecar.delivery.cache import TTLCache
from sidecar.state import ContactRecord

FIRST_ID = 90_002_431_001  # the simulator's first contact id: above 2**31 on purpose
Marks = list[tuple[int, int, int]]  # (keys inserted so far, len(cache), bytes traced)
Put = Callable[[Any, str, ContactRecord], None]  # (cache, key, record): one insertion


@dataclass
class MemoryRow:
    cache: str
    entries: int
    total_bytes: int
    inserted: int = 0  # keys inserted in all (for the bound check)
    after: Marks = field(default_factory=list)  # checkpoints, on the bound row only

    @property
    def per_entry(self) -> float:
        return self.total_bytes / self.entries if self.entries else 0.0

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 1e6


def key(n: int) -> str:
    return f"e:user{n:06d}@example.com"


def _measure(make: Callable[[], Any], put: Put, count: int, checkpoints: int) -> Marks:
    """Build a cache, insert ``count`` distinct keys; traced bytes held after each checkpoint."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cache = make()
        marks: Marks = []
        step = count // checkpoints
        for n in range(count):
            put(cache, key(n), ContactRecord(FIRST_ID + n, f"Customer {n:06d}"))
            if (n + 1) % step == 0:
                gc.collect()
                marks.append((n + 1, len(cache), tracemalloc.get_traced_memory()[0] - base))
    finally:
        tracemalloc.stop()
    return marks


def _row(name: str, make: Callable[[], Any], put: Put, size: int, factor: int = 1) -> MemoryRow:
    """``factor`` times ``size`` new keys, a checkpoint after each ``size``.

    Only a row of several rounds keeps its checkpoints: the report reads them as the bound check.
    """
    marks = _measure(make, put, size * factor, factor)
    _, entries, used = marks[-1]
    if factor == 1:
        return MemoryRow(name, entries, used)
    return MemoryRow(name, entries, used, size * factor, marks)


def _set(cache: Any, k: str, v: ContactRecord) -> None:
    cache.set(k, v)


def _setitem(cache: Any, k: str, v: ContactRecord) -> None:
    cache[k] = v


def run(size: int = 100_000) -> list[MemoryRow]:
    ours = partial(TTLCache, size, 3600)
    rows = [
        _row("sidecar.cache.TTLCache", ours, _set, size),
        # A stream of new identifiers, three times the bound: its size and memory should stay put.
        _row("sidecar.cache.TTLCache (bound)", ours, _set, size, factor=3),
        _row("dict (floor: no expiry, no LRU)", dict, _setitem, size),
    ]
    try:  # a comparison where installed, not a dependency of the sidecar
        import cachetools
    except ImportError:
        return rows
    name = f"cachetools.TTLCache {cachetools.__version__} (comparison)"
    rows.append(_row(name, lambda: cachetools.TTLCache(size, 3600), _setitem, size))
    return rows
