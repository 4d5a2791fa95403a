"""Tracing off and on: the same warm Tracks through two sidecars, one without OTEL_* in its
environment and one exporting every span over OTLP/gRPC to a local receiver (in this process,
opentelemetry-proto's TraceService: what a collector would be sent). Rounds alternate off, on, off,
on, so a drift of the machine hits both alike; each round is a fresh sidecar process.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from sidecar.simulator import otlp
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import load, procs

LEVELS = (1, 32)


@dataclass
class TracingRow:
    tracing: str  # "off" or "on"
    point: load.Point
    spans: int = 0  # spans the receiver got from this row's sidecar, on its first row only


def run(sim: procs.Process, sim_url: str, workdir: Path, seconds: float, warmup: float,
        rounds: int = 2) -> list[TracingRow]:
    server, receiver, port = otlp.serve()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "benchmark"}
    rows: list[TracingRow] = []
    try:
        for n in range(rounds):
            for mode, extra in (("off", {}), ("on", env)):
                before = len(receiver.spans())
                name = f"sidecar-tracing-{mode}-{n}"
                sidecar, target = procs.start_sidecar(sim_url, workdir, name=name, env=extra)
                try:
                    meter = procs.CpuMeter(sidecar.pid, sim.pid)
                    points = asyncio.run(_measure(target, seconds, warmup, meter))
                finally:
                    sidecar.stop()  # SIGTERM: the traced one flushes its last spans first
                rows += [TracingRow(mode, p) for p in points]
                rows[-len(points)].spans = len(receiver.spans()) - before
    finally:
        server.stop(0)
    return rows


async def _measure(target: str, seconds: float, warmup: float, meter: procs.CpuMeter) -> list[load.Point]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        pool = await load.warm_pool(stub, f"t{uuid.uuid4().hex[:8]}", 100)
        points = []
        for level in LEVELS:
            loop = partial(load.closed_loop, in_flight=level, seconds=seconds, warmup=warmup)
            before = meter.read()
            point = await loop("sidecar", load.unary_sender(stub, pool))
            point.cpu = meter.since(before)
            points.append(point)
        return points


def summary(rows: list[TracingRow]) -> list[tuple[str, int, float, float, float]]:
    """Per (tracing, in flight), the rounds averaged: (tracing, in flight, events/s, p50 ms, sidecar CPU
    ms/event)."""
    out = []
    for mode in ("off", "on"):
        for level in LEVELS:
            mine = [r for r in rows if r.tracing == mode and r.point.in_flight == level]
            if mine:
                k = len(mine)
                rate = sum(r.point.rate for r in mine) / k
                p50 = sum(r.point.p50 for r in mine) / k
                cpu = sum(r.point.cpu_ms()[1] for r in mine) / k
                out.append((mode, level, rate, p50, cpu))
    return out


def spans_line(rows: list[TracingRow]) -> str:
    on = [r for r in rows if r.tracing == "on"]
    tracks = sum(r.point.answered for r in on)
    return (f"spans exported by the traced sidecars: {sum(r.spans for r in rows):,} (for {tracks:,} measured "
            "Tracks, plus the Identify and Track of each warm person); by the others: "
            f"{sum(r.spans for r in rows if r.tracing == 'off'):,}")
