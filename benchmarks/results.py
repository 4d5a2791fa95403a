"""What one run measured, shared by the tables, the markdown page and the plot."""

from __future__ import annotations

from dataclasses import dataclass, field

from .load import Point
from .memory import MemoryRow
from .profiling import Profile
from .scenarios import CallsRow
from .tracing import TracingRow

# Every load mode, in table and legend order, with its label.
MODES = {
    "raw": "raw httpx",
    "sidecar": "sidecar unary",
    "stream": "sidecar Deliver stream",
    "aiohttp": "raw aiohttp (ceiling)",
    "grpc": "gRPC no-op (Health.Check)",
}


@dataclass
class Results:
    quick: bool
    seconds: float
    pool: int
    levels: list[int]
    ceiling: bool = True  # also the raw aiohttp client
    calls: list[CallsRow] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    sidecar_rss_mb: float = 0.0
    simulator_rss_mb: float = 0.0
    profiles: list[Profile] = field(default_factory=list)
    fleet: list[str] = field(default_factory=list)  # the fleet scenario's lines (benchmarks/fleet.py)
    tracing: list[TracingRow] = field(default_factory=list)  # the same Tracks with tracing off and on
    stall: list[str] = field(default_factory=list)  # health Check latency under wide requests (stall.py)
    wall_seconds: float = 0.0

    @property
    def top(self) -> int:
        return max(self.levels)

    def point(self, mode: str, in_flight: int) -> Point | None:
        return next((p for p in self.points if p.mode == mode and p.in_flight == in_flight), None)

    def best_raw(self) -> Point | None:
        """Raw httpx at the load where it went fastest (it slows down past a few in flight)."""
        return max((p for p in self.points if p.mode == "raw"), key=lambda p: p.rate, default=None)
