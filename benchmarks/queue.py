"""`python -m benchmarks.queue [--seconds S] [--drain-seconds D]`: the delivery queue (issue 12).

Two measurements, each against real processes (the simulator, a sidecar on SQLite):
1. Enqueue latency and throughput, closed loop at 1 and 32 in flight, on a sidecar that only accepts
   (queueConcurrency 0), so every answer waits for a durable commit (synchronous=FULL) and nothing
   else runs beside it.
2. The drain: a backlog of tracks delivered by the queue under rateLimitPerMinute 120 against a
   simulator enforcing 120 calls a minute per token (429 with Retry-After); it reports the 429s, the
   peak calls in any rolling 60 s (from the simulator's arrival times) and the share of the limit used
   over the last full minute.
Writes docs/benchmarks-queue.md. Not a test: wall-clock figures of this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import CHANNEL_ID, EVENT
from .procs import Process, start_sidecar, start_simulator, workdir
from .scenarios import struct, track_request

LIMIT = 120
WINDOW = 60.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def enqueue_loop(
    stub: pb_grpc.TrengoSidecarStub, in_flight: int, seconds: float
) -> tuple[float, float, float]:
    """(Enqueues per second, p50 ms, p99 ms) over ``seconds`` after a one-second warm-up."""
    latencies: list[float] = []
    tag = uuid.uuid4().hex[:8]
    counter = 0
    measuring_from = time.monotonic() + 1.0
    ends = measuring_from + seconds

    async def worker() -> None:
        nonlocal counter
        while time.monotonic() < ends:
            counter += 1
            request = pb.EnqueueRequest(track=track_request(f"{tag}.{counter % 5000}@example.com", counter))
            started = time.monotonic()
            await stub.Enqueue(request, timeout=10)
            if started >= measuring_from:
                latencies.append((time.monotonic() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    latencies.sort()
    return len(latencies) / seconds, statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


async def measure_enqueue(target: str, seconds: float) -> list[tuple[int, float, float, float]]:
    rows = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        for level in (1, 32):
            rate, p50, p99 = await enqueue_loop(stub, level, seconds)
            say(f"  Enqueue at {level:>2} in flight: {rate:,.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            rows.append((level, rate, p50, p99))
    return rows


def seed_people(sim_url: str, people: int) -> list[str]:
    root = sim_url.removesuffix("/api/v2")
    addresses = [f"drain{n}@example.com" for n in range(people)]
    with httpx.Client(base_url=root, trust_env=False, timeout=10) as http:
        http.put("/_sim/config", json={"rate_limit_per_minute": LIMIT}).raise_for_status()
        for address in addresses:
            body = {"name": address, "identifier": address, "channel_id": CHANNEL_ID}
            http.post("/_sim/contacts", json=body).raise_for_status()
    return addresses


async def measure_drain(target: str, sim_url: str, seconds: float) -> dict[str, float]:
    """Enqueue a backlog larger than the run can deliver, then watch the simulator for ``seconds``."""
    addresses = seed_people(sim_url, 40)
    backlog = int(LIMIT / WINDOW * seconds * 1.5) + LIMIT
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        for n in range(backlog):
            track = track_request(addresses[n % len(addresses)], n, EVENT)
            track.context.CopyFrom(struct({"traits": {"email": addresses[n % len(addresses)]}}))
            await stub.Enqueue(pb.EnqueueRequest(track=track), timeout=10)
    say(f"  {backlog} tracks queued; draining for {seconds:.0f} s at {LIMIT}/min")
    started = time.time()
    await asyncio.sleep(seconds)
    with httpx.Client(base_url=sim_url.removesuffix("/api/v2"), trust_env=False, timeout=30) as http:
        requests = http.get("/_sim/requests").json()["requests"]
    times = sorted(r["at"] for r in requests if r["at"] >= started - 1)
    rejected = sum(1 for r in requests if r["status"] == 429)
    peak = max((bisect.bisect_left(times, t + WINDOW) - i for i, t in enumerate(times)), default=0)
    last_minute = sum(1 for t in times if t >= started + seconds - WINDOW)
    result: dict[str, float] = {
        "calls": len(times), "rejected": rejected, "peak": peak, "last_minute": last_minute
    }
    say(f"  {len(times)} calls, {rejected} answered 429, peak {peak} in 60 s, last minute {last_minute}")
    return result


def report(rows: list[tuple[int, float, float, float]], drain: dict[str, float], seconds: float) -> str:
    lines = [
        "# Queue benchmark (issue 12)",
        "",
        "`python -m benchmarks.queue` (part of `make bench`): a sidecar on SQLite (synchronous=FULL,",
        "commits batched), the simulator as Trengo, both as processes on this machine.",
        "",
        "| Enqueue | per second | p50 | p99 |",
        "|---|---|---|---|",
        *(f"| {n} in flight | {rate:,.0f} | {p50:.2f} ms | {p99:.2f} ms |" for n, rate, p50, p99 in rows),
        "",
        f"Drain at rateLimitPerMinute {LIMIT} against a simulator enforcing {LIMIT}/min, "
        f"over {seconds:.0f} s: {drain['calls']:.0f} calls, {drain['rejected']:.0f} answered 429, "
        f"at most {drain['peak']:.0f} in any rolling 60 s, {drain['last_minute']:.0f} in the last "
        f"minute ({drain['last_minute'] / LIMIT:.0%} of the limit).",
        "",
    ]
    return "\n".join(lines)


async def run(seconds: float, drain_seconds: float, out: Path) -> None:
    work = workdir()
    sim, sim_url = start_simulator(work)
    processes: list[Process] = [sim]
    try:
        say("Enqueue (queueConcurrency 0: accept only)")
        accept, target = start_sidecar(sim_url, work, "accept", store=f"sqlite:///{work}/accept.db",
                                       queueConcurrency=0, logLevel="WARNING")  # fmt: skip
        processes.append(accept)
        rows = await measure_enqueue(target, seconds)
        accept.stop()
        say("Drain")
        drainer, target = start_sidecar(sim_url, work, "drain", store=f"sqlite:///{work}/drain.db",
                                        rateLimitPerMinute=LIMIT, logLevel="WARNING")  # fmt: skip
        processes.append(drainer)
        drain = await measure_drain(target, sim_url, drain_seconds)
    finally:
        for process in processes:
            process.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks-queue.md").write_text(report(rows, drain, drain_seconds))
    say(f"wrote {out / 'benchmarks-queue.md'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per Enqueue level")
    parser.add_argument("--drain-seconds", type=float, default=90.0, help="how long the drain is watched")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    asyncio.run(run(args.seconds, args.drain_seconds, Path(args.out)))


if __name__ == "__main__":
    main()
