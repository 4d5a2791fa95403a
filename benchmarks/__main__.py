"""`python -m benchmarks [--quick] [--out docs/] [--profile]`: see benchmarks/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable
from contextlib import aclosing
from functools import partial
from pathlib import Path

import grpc

from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import fleet, load, memory, procs, profiling, report, scenarios, stall, tracing
from .results import Results

LEVELS = [1, 4, 8, 16, 32]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run: 0.5 s per load point")
    parser.add_argument("--out", default="docs", help="where benchmarks.md and benchmarks.png go (docs/)")
    parser.add_argument("--seconds", type=float, help="measured seconds per load point (3, quick 0.5)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="/tmp/trengo-sidecar-profile",
        metavar="PREFIX",
        help="also profile sidecars under pyinstrument: unary at 1 and 32 in flight, Deliver at 32 "
        "(PREFIX-MODE-N.pyisession and .txt)",
    )
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the raw aiohttp client (the simulator's ceiling)"
    )
    parser.add_argument(
        "--no-fleet", action="store_true", help="skip the fleet scenario (sidecars sharing one store)"
    )
    parser.add_argument("--no-tracing", action="store_true", help="skip the tracing off/on comparison")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    return parser.parse_args(argv)


def say(message: str) -> None:
    """Progress, on stderr: stdout is for the report."""
    print(message, file=sys.stderr, flush=True)


async def load_phase(
    target: str, sim_url: str, results: Results, warmup: float, meter: procs.CpuMeter
) -> None:
    tag = uuid.uuid4().hex[:8]
    async with (
        grpc.aio.insecure_channel(target) as channel,
        aclosing(scenarios.SimCounter(sim_url)) as counter,
    ):
        stub = pb_grpc.TrengoSidecarStub(channel)
        for level in results.levels:
            # A fresh simulator per level keeps its request log and ticket table small; new people
            # per level, because its contact ids start again after a reset.
            await counter.reset()
            pool = await load.warm_pool(stub, f"{tag}.n{level}", results.pool)
            points = await level_points(channel, sim_url, pool, level, results, warmup, meter)
            results.points += points
            say(
                f"  {level:>2} in flight: "
                + ", ".join(f"{p.mode} {p.rate:,.0f}/s p50 {p.p50:.2f} ms" for p in points)
            )


async def level_points(
    channel: grpc.aio.Channel,
    sim_url: str,
    pool: load.Pool,
    level: int,
    results: Results,
    warmup: float,
    meter: procs.CpuMeter,
) -> list[load.Point]:
    """Every mode at one number of calls in flight, each with the CPU it cost."""
    stub = pb_grpc.TrengoSidecarStub(channel)
    loop = partial(load.closed_loop, in_flight=level, seconds=results.seconds, warmup=warmup)
    async with load.raw_client(sim_url, level) as http:
        points = [await metered(meter, loop("raw", load.raw_sender(http, pool)))]
    points.append(await metered(meter, loop("sidecar", load.unary_sender(stub, pool))))
    points.append(await metered(meter, load.stream_loop(stub, pool, level, results.seconds, warmup)))
    if results.ceiling:
        async with load.aiohttp_client(sim_url, level) as session:
            points.append(await metered(meter, loop("aiohttp", load.aiohttp_sender(session, pool))))
    if level in (results.levels[0], results.levels[-1]):
        # The floor under the sidecar's overhead: a gRPC round trip that does nothing.
        points.append(await metered(meter, loop("grpc", load.health_sender(channel))))
    return points


async def metered(meter: procs.CpuMeter, run: Awaitable[load.Point]) -> load.Point:
    before = meter.read()
    point = await run
    point.cpu = meter.since(before)
    return point


async def measure(
    target: str, sim_url: str, results: Results, people: int, warmup: float, meter: procs.CpuMeter
) -> None:
    say("calls per event ...")
    results.calls = await scenarios.calls_per_event(target, sim_url, people)
    say("throughput and latency ...")
    await load_phase(target, sim_url, results, warmup, meter)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results = Results(
        quick=args.quick,
        seconds=args.seconds or (0.5 if args.quick else 3.0),
        pool=100 if args.quick else 200,
        levels=LEVELS,
        ceiling=not args.no_ceiling,
    )
    workdir = procs.workdir()
    try:
        run(args, results, workdir)
    finally:
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.wall_seconds = time.monotonic() - started
    print(report.text(results))
    md, png = report.write(results, Path(args.out))
    print(f"\nwrote {md} and {png} ({results.wall_seconds:.0f}s)")
    return 0


def run(args: argparse.Namespace, results: Results, workdir: Path) -> None:
    """The simulator for the whole run; a sidecar for the load, then memory, then the profiles."""
    sim, sim_url = procs.start_simulator(workdir)
    try:
        on_sidecar(sim, sim_url, results, workdir)
        if not args.no_tracing:
            say("tracing off and on ...")
            warmup = 0.2 if results.quick else 0.5
            results.tracing = tracing.run(sim, sim_url, workdir, results.seconds, warmup)
        say("wide requests and the event loop ...")
        results.stall = stall.lines(stall.run(sim_url, workdir, 2.0 if results.quick else 5.0))
        say("memory ...")
        results.memory = memory.run(100_000)
        if not args.no_fleet:
            say(f"fleet: {fleet.SIDECARS} sidecars on one token, memory then PostgreSQL ...")
            results.fleet = fleet.lines(*fleet.run(sim_url, workdir))
        if args.profile:
            profile(Path(args.profile), sim_url, results, workdir)
    finally:
        sim.stop()


def on_sidecar(sim: procs.Process, sim_url: str, results: Results, workdir: Path) -> None:
    """Calls per event, then throughput and latency, on one sidecar; stopped before memory is measured."""
    sidecar, target = procs.start_sidecar(sim_url, workdir)
    try:
        say(f"simulator {sim_url} (pid {sim.pid}), sidecar {target} (pid {sidecar.pid})")
        meter = procs.CpuMeter(sidecar.pid, sim.pid)
        people, warmup = (10, 0.2) if results.quick else (40, 0.5)
        asyncio.run(measure(target, sim_url, results, people, warmup, meter))
        results.sidecar_rss_mb, results.simulator_rss_mb = sidecar.rss_mb(), sim.rss_mb()
    finally:
        sidecar.stop()


def profile(prefix: Path, sim_url: str, results: Results, workdir: Path) -> None:
    if not profiling.available():
        say("--profile: pyinstrument is not installed (pip install pyinstrument)")
        return
    say("profile ...")
    seconds = max(results.seconds * 2, 5.0)
    for level, stream in [(1, False), (LEVELS[-1], False), (LEVELS[-1], True)]:
        results.profiles.append(profiling.run(sim_url, workdir, prefix, seconds, level, stream))


if __name__ == "__main__":
    sys.exit(main())
