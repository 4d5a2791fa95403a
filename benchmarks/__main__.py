"""`python -m benchmarks [--quick] [--out docs/] [--profile]`: see benchmarks/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable
from functools import partial
from pathlib import Path

import grpc

from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import load, memory, procs, profiling, report, scenarios

LEVELS = [1, 4, 8, 16, 32]
STREAM_TODO = (
    "TODO(stream): not measured - {why}. The scenario (benchmarks/load.py: stream_loop) runs by itself "
    "once the generated stubs have Deliver (`make proto`) and the running sidecar serves it."
)


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
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    return parser.parse_args(argv)


async def load_phase(
    target: str, sim_url: str, results: report.Results, warmup: float, meter: procs.CpuMeter
) -> None:
    counter = scenarios.SimCounter(sim_url)
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.TrengoSidecarStub(channel)
    tag = uuid.uuid4().hex[:8]
    stream = load.stream_available()
    if not stream:
        results.stream_note = STREAM_TODO.format(why="the generated stubs have no Deliver RPC")

    async def metered(run: Awaitable[load.Point]) -> load.Point:
        before = meter.read()
        point = await run
        point.cpu = tuple(b - a for a, b in zip(before, meter.read(), strict=True))  # type: ignore[assignment]
        return point

    try:
        for level in results.levels:
            # A fresh simulator per level keeps its request log and ticket table small; new people
            # per level, because its contact ids start again after a reset.
            await counter.reset()
            pool = await load.warm_pool(stub, f"{tag}.n{level}", results.pool)
            if stream and level == results.levels[0]:
                why = await load.probe_stream(stub, pool)
                if why:
                    stream = False
                    results.stream_note = STREAM_TODO.format(why=f"the running sidecar answers {why}")
            loop = partial(load.closed_loop, in_flight=level, seconds=results.seconds, warmup=warmup)
            async with load.raw_client(sim_url, level) as http:
                points = [await metered(loop("raw", load.raw_sender(http, pool)))]
            points.append(await metered(loop("sidecar", load.unary_sender(stub, pool))))
            if stream:
                points.append(await metered(load.stream_loop(stub, pool, level, results.seconds, warmup)))
            if results.ceiling:
                async with load.aiohttp_client(sim_url, level) as session:
                    points.append(await metered(loop("aiohttp", load.aiohttp_sender(session, pool))))
            if level in (results.levels[0], results.levels[-1]):
                # The floor under the sidecar's overhead: a gRPC round trip that does nothing.
                points.append(await metered(loop("grpc", load.health_sender(channel))))
            results.points += points
            print(
                f"  {level:>2} in flight: "
                + ", ".join(f"{p.mode} {p.rate:,.0f}/s p50 {p.p50:.2f} ms" for p in points),
                file=sys.stderr,
                flush=True,
            )
    finally:
        await channel.close()
        await counter.aclose()


async def measure(
    target: str, sim_url: str, results: report.Results, people: int, warmup: float, meter: procs.CpuMeter
) -> None:
    print("calls per event ...", file=sys.stderr, flush=True)
    results.calls = await scenarios.calls_per_event(target, sim_url, people)
    print("throughput and latency ...", file=sys.stderr, flush=True)
    await load_phase(target, sim_url, results, warmup, meter)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    results = report.Results(
        quick=args.quick,
        seconds=seconds,
        pool=100 if args.quick else 200,
        levels=LEVELS,
        ceiling=not args.no_ceiling,
    )
    workdir = procs.workdir()
    sim, sim_url = procs.start_simulator(workdir)
    sidecar = None
    try:
        sidecar, target = procs.start_sidecar(sim_url, workdir)
        print(f"simulator {sim_url} (pid {sim.pid}), sidecar {target} (pid {sidecar.pid})", file=sys.stderr)
        meter = procs.CpuMeter(sidecar.pid, sim.pid)
        people, warmup = (10, 0.2) if args.quick else (40, 0.5)
        asyncio.run(measure(target, sim_url, results, people, warmup, meter))
        results.sidecar_rss_mb, results.simulator_rss_mb = sidecar.rss_mb(), sim.rss_mb()
        sidecar.stop()
        sidecar = None
        print("memory ...", file=sys.stderr, flush=True)
        results.memory = memory.run(100_000)
        if args.profile:
            if not profiling.available():
                print("--profile: pyinstrument is not installed (pip install pyinstrument)", file=sys.stderr)
            else:
                print("profile ...", file=sys.stderr, flush=True)
                runs = [(1, False), (LEVELS[-1], False)]
                if not results.stream_note:
                    runs.append((LEVELS[-1], True))
                for level, stream in runs:
                    results.profiles.append(
                        profiling.run(
                            sim_url, workdir, Path(args.profile), max(seconds * 2, 5.0), level, stream
                        )
                    )
    finally:
        if sidecar is not None:
            sidecar.stop()
        sim.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.wall_seconds = time.monotonic() - started
    print(report.text(results))
    md, png = report.write(results, Path(args.out))
    print(f"\nwrote {md} and {png} ({results.wall_seconds:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
