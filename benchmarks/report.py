"""The results as text tables (stdout), docs/benchmarks.md, and a two-panel PNG."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from sidecar.trengo import POOL_SIZE

from .load import Point
from .memory import MemoryRow
from .profiling import Profile
from .scenarios import CallsRow

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
    stream_note: str = ""  # why the stream scenario did not run, if it did not
    sidecar_rss_mb: float = 0.0
    simulator_rss_mb: float = 0.0
    profiles: list[Profile] = field(default_factory=list)
    wall_seconds: float = 0.0

    def point(self, mode: str, in_flight: int) -> Point | None:
        return next((p for p in self.points if p.mode == mode and p.in_flight == in_flight), None)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    versions = ", ".join(f"{name} {_version(name)}" for name in ("grpcio", "protobuf", "httpx", "aiohttp"))
    sniffio = importlib.util.find_spec("sniffio") is not None
    return {
        "CPU": cpu,
        "cores (nproc)": str(os.cpu_count() or "?"),
        "usable cores": str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "?",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "libraries": versions,
        "sniffio": "installed"
        if sniffio
        else (
            "absent: httpcore retries `import sniffio` on every lock/event it sets up "
            "(encode/httpcore#1103), which slows every httpx call here, the raw client's and the sidecar's"
        ),
        "commit": commit or "unknown",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    return "\n".join(out)


def calls_table(results: Results, markdown: bool) -> str:
    header = ["scenario", "per", "sidecar calls", "reference calls", "target", "measured"]
    rows = [
        [
            r.scenario,
            r.unit,
            f"{r.per_event:.3f}" if r.per_event < 0.1 else f"{r.per_event:.2f}",
            f"{r.reference:.1f}",
            r.target or "-",
            f"{r.calls} calls / {r.events}",
        ]
        for r in results.calls
    ]
    return _table(header, rows, markdown)


def load_table(results: Results, markdown: bool) -> str:
    header = ["in flight", "mode", "events/s", "x raw", "p50 ms", "p99 ms", "p50 - raw", "p99 x raw"]
    header += ["CPU ms/event: client, sidecar, sim", "errors"]
    rows = []
    for level in results.levels:
        raw = results.point("raw", level)
        for mode in MODES:
            p = results.point(mode, level)
            if p is None:
                continue
            ratio = p50d = p99r = "-"
            if raw is not None and mode != "raw" and raw.rate:
                ratio = f"{p.rate / raw.rate:.2f}"
                p50d = f"{p.p50 - raw.p50:+.2f} ms"
                p99r = f"{p.p99 / raw.p99:.2f}"
            cpu = ", ".join(f"{ms:.2f}" for ms in p.cpu_ms())
            rows.append(
                [
                    str(level),
                    MODES[mode],
                    f"{p.rate:,.0f}",
                    ratio,
                    f"{p.p50:.2f}",
                    f"{p.p99:.2f}",
                    p50d,
                    p99r,
                    cpu,
                    str(p.errors),
                ]
            )
    return _table(header, rows, markdown)


def memory_table(results: Results, markdown: bool) -> str:
    header = ["cache", "entries", "total MB", "bytes/entry", "inserted"]
    rows = [
        [m.cache, f"{m.entries:,}", f"{m.total_mb:.1f}", f"{m.per_entry:.0f}", f"{m.inserted or m.entries:,}"]
        for m in results.memory
    ]
    return _table(header, rows, markdown)


def bound_lines(results: Results) -> list[str]:
    lines = []
    for m in results.memory:
        for inserted, size, used in m.after:
            lines.append(f"after {inserted:,} new keys: {size:,} entries, {used / 1e6:.1f} MB")
    return lines


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the issue's numbers; None when not measured."""
    out: list[tuple[str, str, bool | None]] = []
    by_key = {r.key: r for r in results.calls}

    def calls(key: str, limit: float, label: str) -> None:
        row = by_key.get(key)
        if row is not None:
            out.append((label, f"{row.per_event:.2f}", row.per_event <= limit + 1e-9))

    calls("warm_track", 1.0, "warm Track: 1.0 calls/event")
    calls("warm_identify", 1.0, "warm Identify with dedup: 1.0 calls/event")
    calls("new_identify_track", 3.0, "new person identify+track: <= 3.0 (ref 4.0)")
    channel = by_key.get("channels")
    if channel is not None:
        out.append(
            (
                "channel look-ups amortised to ~0 per event",
                f"{channel.per_event:.4f}",
                channel.per_event < 0.01,
            )
        )
    top = max(results.levels)
    side, raw = results.point("sidecar", top), results.point("raw", top)
    if side and raw and raw.rate:
        ratio = side.rate / raw.rate
        out.append((f"Track at {top} in flight >= 0.7 x raw", f"{ratio:.2f} x", ratio >= 0.7))
    best = max((p for p in results.points if p.mode == "raw"), key=lambda p: p.rate, default=None)
    side = results.point("sidecar", top)
    if side and best and best.rate and best.in_flight != top:
        out.append(
            (
                f"(stricter) Track at {top} vs raw httpx at its best ({best.in_flight} in flight)",
                f"{side.rate / best.rate:.2f} x",
                None,
            )
        )
    side, raw = results.point("sidecar", 1), results.point("raw", 1)
    if side and raw:
        diff = side.p50 - raw.p50
        out.append(("p50 at 1 in flight <= raw + 1 ms", f"{diff:+.2f} ms", diff <= 1.0))
    first = next((m for m in results.memory if m.cache == "sidecar.cache.TTLCache"), None)
    if first is not None:
        out.append(("100,000 cached contacts in <= 30 MB", f"{first.total_mb:.1f} MB", first.total_mb <= 30))
    bound = next((m for m in results.memory if m.after), None)
    if bound is not None:
        sizes = {size for _, size, _ in bound.after}
        peak = max(used for _, _, used in bound.after) / 1e6
        ok = sizes == {bound.entries} and peak <= 30
        out.append(
            (
                f"bound holds under {bound.inserted:,} new identifiers",
                f"len {'/'.join(f'{s:,}' for s in sorted(sizes))}, peak {peak:.1f} MB",
                ok,
            )
        )
    return out


def targets_table(results: Results, markdown: bool) -> str:
    rows = [[t, m, "yes" if ok else ("NO" if ok is False else "-")] for t, m, ok in targets(results)]
    return _table(["target (issue)", "measured", "met"], rows, markdown)


def caveats(results: Results) -> list[str]:
    """What a reader of the ratios should know, from the numbers of this run."""
    out = []
    top = max(results.levels)
    raw_top = results.point("raw", top)
    best = max((p for p in results.points if p.mode == "raw"), key=lambda p: p.rate, default=None)
    if raw_top and best and raw_top.rate < 0.8 * best.rate:
        out.append(
            f"- raw httpx slows down past {best.in_flight} in flight ({best.rate:,.0f}/s there, "
            f"{raw_top.rate:,.0f}/s at {top}): its client is CPU-bound in httpcore's connection pool "
            f"({raw_top.cpu_ms()[0]:.2f} ms of client CPU per event at {top}, {best.cpu_ms()[0]:.2f} at "
            f"{best.in_flight}), so the ratio at {top} flatters the sidecar; the stricter target row "
            "compares with raw at its best."
        )
    noop, raw1, side1 = results.point("grpc", 1), results.point("raw", 1), results.point("sidecar", 1)
    if noop and raw1 and side1:
        out.append(
            f"- At 1 in flight a gRPC round trip that does nothing takes {noop.p50:.2f} ms (p50) here, so of "
            f"the sidecar's {side1.p50 - raw1.p50:+.2f} ms over raw, about {noop.p50:.2f} ms is the gRPC hop "
            "itself and the rest is work in the sidecar process (see its CPU per event)."
        )
    side = [p.cpu_ms()[1] for p in results.points if p.mode == "sidecar"]
    if side:
        per_event = sum(side) / len(side)
        out.append(
            f"- The sidecar process spends {min(side):.2f}-{max(side):.2f} ms of CPU per Track; one process "
            f"(one event loop) therefore tops out near {1000 / per_event:,.0f} events/s, whatever the load."
        )
    return out


def profile_lines(profile: Profile) -> list[str]:
    total = profile.busy + profile.idle
    lines = [
        f"pyinstrument, {profile.calls:,} warm Tracks ({profile.label}); "
        f"busy {profile.busy:.1f}s of {total:.1f}s sampled ({profile.busy / total:.0%}); "
        "shares below are of the busy time.",
        "self time by package: "
        + ", ".join(f"{name} {share:.0%}" for name, share in profile.packages if share >= 0.01),
        "sidecar self time by module: "
        + ", ".join(f"{name} {share:.1%}" for name, share in profile.modules if share >= 0.001),
        "hot spots (inclusive):",
        *[f"  {share:6.1%}  {label}" for label, share in profile.spots],
        "sidecar functions (inclusive):",
    ]
    lines += [f"  {share:6.1%}  {name}" for name, share in profile.functions]
    lines.append(f"full tree: {profile.text_path}")
    return lines


def text(results: Results) -> str:
    parts = [
        "Trengo calls per event (counted by the simulator)",
        calls_table(results, False),
        "",
        f"Track throughput and latency ({results.seconds:g}s per point, {results.pool} warm people)",
        load_table(results, False),
    ]
    parts += caveats(results)
    if results.stream_note:
        parts.append(f"stream: {results.stream_note}")
    parts += ["", "Memory (tracemalloc, in-process)", memory_table(results, False), *bound_lines(results)]
    parts += ["", "Targets", targets_table(results, False)]
    for profile in results.profiles:
        parts += ["", f"Profile: {profile.label}", *profile_lines(profile)]
    return "\n".join(parts)


def markdown(results: Results, png_name: str) -> str:
    info = machine()
    mode = "quick (`--quick`)" if results.quick else "full"
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks`); do not edit by hand. `--quick` is a short run,",
        "`--out DIR` writes elsewhere, `--profile` adds pyinstrument profiles of the sidecar. The simulator",
        "and the sidecar run as separate processes on this machine, next to the benchmark client, so all",
        "three share its cores: figures are for comparing runs on one machine, not a capacity plan.",
        "",
        "## Machine",
        "",
        *[f"- **{k}**: {v}" for k, v in info.items()],
        f"- **run**: {mode}, {results.seconds:g}s per load point, {results.wall_seconds:.0f}s in all",
        "",
        "Sidecar config: the simulator's EMAIL channel 405980, `channelIdentifier: email`,",
        "`enableDedup: true`, an `eventTemplateMap` with a subject template, default logging (one INFO line",
        "per call, to a file), and **`rateLimitPerMinute: 0`**, so the sidecar's own Trengo rate limiter",
        "never throttles the benchmark (the default, 120/min, would cap every scenario at 2 calls/s).",
        "",
        "## Targets",
        "",
        targets_table(results, True),
        "",
        "## Trengo calls per event",
        "",
        "Counted from the simulator's request log, per scenario (it is reset in between, and set-up calls",
        "are left out). Reference: RudderStack's Trengo destination, which searches the contact",
        "(`GET /contacts?term=`) before every Track and deduplicated Identify, and never lists channels.",
        "",
        calls_table(results, True),
        "",
        "## Track throughput and latency",
        "",
        "Closed loop: N calls in flight, each sending the next when answered. *sidecar unary*: `Track`",
        "over one grpc.aio channel; *raw httpx*: one `httpx.AsyncClient` with the sidecar's pool size",
        f"({POOL_SIZE} connections)",
        "posting the same ticket bodies (as the sidecar sent them) to the simulator's `/api/v2/tickets`;",
        "*Deliver stream*: one bidirectional stream kept at N events outstanding; *raw aiohttp*: the same",
        "posts with `aiohttp.ClientSession`, to show what the simulator itself can take; *gRPC no-op*:",
        "`grpc.health.v1.Health/Check` on the sidecar's own server (at the lowest and highest N), the floor",
        "of any gRPC hop on this machine. Contacts are warm: one Trengo call per event. Ratios are to raw",
        "httpx at the same N.",
        "",
        load_table(results, True),
        "",
    ]
    lines += [*caveats(results), ""]
    if results.stream_note:
        lines += [f"Deliver stream: {results.stream_note}", ""]
    lines += [
        f"![latency distribution and throughput]({png_name})",
        "",
        "## Memory",
        "",
        "In-process, with tracemalloc: keys like `e:user123456@example.com` (the contact cache's own form),",
        "ids above 2**31, keys and values included. The bound row inserts three times the bound as new",
        "identifiers (a stream of people never seen again). The cachetools row appears only where cachetools",
        "is installed (`pip install cachetools`): it is a comparison, not a dependency of the sidecar.",
        "",
        memory_table(results, True),
        "",
        *[f"- {line}" for line in bound_lines(results)],
        "",
        f"Resident memory after the run: sidecar {results.sidecar_rss_mb:.0f} MB, simulator "
        f"{results.simulator_rss_mb:.0f} MB.",
        "",
    ]
    for profile in results.profiles:
        lines += [
            f"## Profile at {profile.in_flight} in flight",
            "",
            "```",
            *profile_lines(profile),
            "```",
            "",
        ]
    return "\n".join(lines)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "raw": "#4c72b0",
        "sidecar": "#dd8452",
        "stream": "#55a868",
        "aiohttp": "#8c8c8c",
        "grpc": "#c44e52",
    }
    top = max(results.levels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6), dpi=110)
    for mode, label in MODES.items():
        p = results.point(mode, top)
        if p is None or not p.latencies:
            continue
        ordered = sorted(x * 1000 for x in p.latencies)
        n = len(ordered)
        left.plot(
            ordered,
            [(i + 1) / n for i in range(n)],
            label=f"{label} (p50 {p.p50:.1f} ms)",
            color=colours[mode],
            lw=2,
        )
    left.set_xscale("log")
    left.set_xlabel("latency per Track (ms, log scale)")
    left.set_ylabel("fraction of calls at or below")
    left.set_title(f"Latency distribution at {top} calls in flight")
    left.axhline(0.5, color="grey", lw=0.6, ls=":")
    left.axhline(0.99, color="grey", lw=0.6, ls=":")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=9, frameon=False)
    for mode, label in MODES.items():
        xs = [lv for lv in results.levels if results.point(mode, lv) is not None]
        if not xs:
            continue
        ys = [results.point(mode, lv).rate for lv in xs]  # type: ignore[union-attr]
        if mode == "grpc":  # measured at the ends only
            continue
        if mode == "aiohttp":  # an order of magnitude above the rest: named, not drawn
            right.plot(
                [],
                [],
                ls="--",
                color=colours[mode],
                label=f"{label}: {min(ys):,.0f}-{max(ys):,.0f}/s, off the scale",
            )
            continue
        right.plot(xs, ys, marker="o", label=label, color=colours[mode], lw=2)
    right.set_xscale("log", base=2)
    right.set_xticks(results.levels)
    right.set_xticklabels([str(lv) for lv in results.levels])
    drawn = [p.rate for p in results.points if p.mode not in ("aiohttp", "grpc")]
    right.set_ylim(bottom=0, top=max(drawn, default=1) * 1.25)
    right.set_xlabel("calls in flight")
    right.set_ylabel("Track events per second")
    right.set_title("Throughput against calls in flight")
    right.grid(True, alpha=0.3)
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=9, frameon=False)
    info = machine()
    fig.suptitle(
        f"trengo-sidecar vs raw httpx on the Trengo simulator - {info['cores (nproc)']} cores, "
        f"{info['CPU']}, Python {info['Python']}, {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: Results, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    png = out / "benchmarks.png"
    md = out / "benchmarks.md"
    plot(results, png)
    md.write_text(markdown(results, png.name))
    return md, png
