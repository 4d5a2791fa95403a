"""Memory of the contact cache, measured in-process with tracemalloc.

Keys and values look like the sidecar's: ``"e:user123456@example.com"`` (what transform.cache_key
makes of an e-mail) to an int id above 2**31 (Trengo's contact ids are). The keys are built inside
the measured region, because the cache is what keeps them alive in the sidecar.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.cache import TTLCache

FIRST_ID = 90_002_431_001  # the simulator's first contact id: above 2**31 on purpose


@dataclass
class MemoryRow:
    cache: str
    entries: int
    total_bytes: int
    inserted: int = 0  # keys inserted in all (for the bound check)
    after: list[tuple[int, int, int]] = field(default_factory=list)  # (inserted, len, bytes)

    @property
    def per_entry(self) -> float:
        return self.total_bytes / self.entries if self.entries else 0.0

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 1e6


def key(n: int) -> str:
    return f"e:user{n:06d}@example.com"


def _measure(
    make: Callable[[], Any], put: Callable[[Any, str, int], None], count: int, checkpoints: int = 1
) -> tuple[Any, list[tuple[int, int, int]]]:
    """Build a cache, insert ``count`` distinct keys; traced bytes held after each checkpoint."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cache = make()
        marks: list[tuple[int, int, int]] = []
        step = count // checkpoints
        for n in range(count):
            put(cache, key(n), FIRST_ID + n)
            if (n + 1) % step == 0:
                gc.collect()
                marks.append((n + 1, len(cache), tracemalloc.get_traced_memory()[0] - base))
    finally:
        tracemalloc.stop()
    return cache, marks


def sidecar_cache(size: int) -> MemoryRow:
    _, marks = _measure(lambda: TTLCache(size, 3600), lambda c, k, v: c.set(k, v), size)
    return MemoryRow("sidecar.cache.TTLCache", marks[-1][1], marks[-1][2])


def sidecar_cache_bound(size: int, factor: int = 3) -> MemoryRow:
    """A stream of new identifiers: ``factor`` times the bound inserted; size and memory stay put."""
    _, marks = _measure(lambda: TTLCache(size, 3600), lambda c, k, v: c.set(k, v), size * factor, factor)
    return MemoryRow("sidecar.cache.TTLCache (bound)", marks[-1][1], marks[-1][2], size * factor, marks)


def cachetools_cache(size: int) -> MemoryRow | None:
    """The same with cachetools.TTLCache, if installed (optional: not a dependency of the sidecar)."""
    try:
        import cachetools
    except ImportError:
        return None

    def put(cache: Any, k: str, v: int) -> None:
        cache[k] = v

    _, marks = _measure(lambda: cachetools.TTLCache(size, 3600), put, size)
    return MemoryRow(f"cachetools.TTLCache {cachetools.__version__} (comparison)", marks[-1][1], marks[-1][2])


def plain_dict(size: int) -> MemoryRow:
    """The floor: a plain dict of the same keys and ids, no expiry."""

    def put(cache: Any, k: str, v: int) -> None:
        cache[k] = v

    _, marks = _measure(dict, put, size)
    return MemoryRow("dict (floor: no expiry, no LRU)", marks[-1][1], marks[-1][2])


def run(size: int = 100_000) -> list[MemoryRow]:
    rows = [sidecar_cache(size), sidecar_cache_bound(size), plain_dict(size)]
    other = cachetools_cache(size)
    if other is not None:
        rows.append(other)
    return rows
