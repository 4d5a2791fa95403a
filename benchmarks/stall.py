"""Wide requests against the event loop: does a health Check still answer while they are decoded?

Issue 22: eight 3.9 MB Tracks of 190,000 fields in flight pushed a health Check from 3 ms to 7 s,
past kubelet's 2 s liveness timeout. Here one sidecar gets, for a few seconds each, eight requests
in flight at all times of two kinds, while a separate channel sends a health Check every 20 ms:

- "at the cap": about 4 MB (maxMessageBytes) in 9,990 fields of 400 bytes, under maxEventFields:
  parsed, converted and delivered (a ticket each);
- "past the cap": about 4 MB of 200,000 one-byte fields: refused (INVALID_ARGUMENT) after counting.

Reported: the health Check's p50, p99 and worst latency, and the wide calls completed.
Target: p99 under 200 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import EVENT, procs

IN_FLIGHT = 8
PROBE_EVERY = 0.02
TARGET_P99_MS = 200.0
EMAIL = "wide@example.com"


@dataclass
class StallRow:
    kind: str
    request_mb: float
    calls: int
    probes: int
    p50_ms: float
    p99_ms: float
    worst_ms: float


def wide_track(fields: int, size: int) -> pb.TrackRequest:
    request = pb.TrackRequest(event=EVENT)
    request.context.update({"traits": {"email": EMAIL}})
    value = "v" * size
    for i in range(fields):
        request.properties.fields[f"k{i:06d}"].string_value = value
    return request


async def _probe(target: str, stop: asyncio.Event) -> list[float]:
    took: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            took.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(PROBE_EVERY)
    return took


async def _load(target: str, request: pb.TrackRequest | None, seconds: float) -> tuple[int, list[float]]:
    # Serialized once and sent as bytes: serializing 200,000 fields per call in this process would
    # hold its GIL and slow the probe here, not the sidecar.
    data = request.SerializeToString() if request is not None else b""
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        track = channel.unary_unary("/trengo.sidecar.v1.TrengoSidecar/Track")  # bytes in, bytes out
        await stub.Identify(pb.IdentifyRequest(user_id="wide", traits=_struct({"email": EMAIL})), timeout=30)
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe(target, stop))
        ends = time.monotonic() + seconds
        done = 0

        async def sender() -> None:
            nonlocal done
            if not data:
                await asyncio.sleep(seconds)
                return
            while time.monotonic() < ends:
                try:
                    await track(data, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                done += 1

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
        stop.set()
        return done, await probe


def _struct(data: dict[str, str]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def run(sim_url: str, workdir: Path, seconds: float) -> list[StallRow]:
    sidecar, target = procs.start_sidecar(sim_url, workdir, name="stall")
    rows = []
    try:
        wide = (
            ("none (the probe alone)", None),
            ("at the cap", wide_track(9_990, 400)),
            ("past the cap", wide_track(200_000, 1)),
        )
        for kind, request in wide:
            calls, took = asyncio.run(_load(target, request, seconds))
            took.sort()
            p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
            mb = request.ByteSize() / 1e6 if request is not None else 0.0
            rows.append(StallRow(kind, mb, calls, len(took), statistics.median(took), p99, took[-1]))
    finally:
        sidecar.stop()
    return rows


def lines(rows: list[StallRow]) -> list[str]:
    out = [
        f"Health Check every {PROBE_EVERY * 1000:.0f} ms while {IN_FLIGHT} wide Tracks are in flight at all "
        f"times (benchmarks/stall.py); target p99 under {TARGET_P99_MS:.0f} ms:",
        "",
        "| wide requests | MB each | calls done | checks | p50 ms | p99 ms | worst ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.kind} | {r.request_mb:.1f} | {r.calls} | {r.probes} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.worst_ms:.1f} |"
        )
    return out


if __name__ == "__main__":
    import shutil
    import sys

    work = procs.workdir()
    sim, url = procs.start_simulator(work)
    try:
        print("\n".join(lines(run(url, work, float(sys.argv[1]) if len(sys.argv) > 1 else 5.0))))
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
