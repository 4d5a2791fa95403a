"""``--profile``: a second sidecar process under pyinstrument, driven with warm Track calls.

The sidecar runs as ``python -m pyinstrument -r pyisession -o FILE -m sidecar ...``; on SIGTERM it
drains and exits, and pyinstrument saves its session. We then sum the samples two ways: time per
sidecar function (inclusive, each function once per stack) and self time per package, both as a
share of the busy time (samples not parked in the event loop's select).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import load, procs

PACKAGES = (
    ("sidecar/", "sidecar (ours)"),
    ("grpc/", "grpc"),
    ("grpc_", "grpc"),
    ("google/protobuf", "protobuf"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpcore"),
    ("h11/", "h11"),
    ("anyio/", "anyio"),
    ("/logging/", "logging"),
    ("/json/", "json"),
    ("/asyncio/", "asyncio"),
    ("/uuid.py", "uuid"),
    ("/dataclasses.py", "dataclasses"),
)


@dataclass
class Profile:
    in_flight: int
    path: Path
    text_path: Path
    busy: float
    idle: float
    calls: int
    functions: list[tuple[str, float]] = field(default_factory=list)  # (function, share of busy)
    packages: list[tuple[str, float]] = field(default_factory=list)  # (package, self-time share of busy)
    spots: list[tuple[str, float]] = field(default_factory=list)  # (what, inclusive share of busy)
    modules: list[tuple[str, float]] = field(default_factory=list)  # (sidecar module, self-time share)
    label: str = ""


def available() -> bool:
    return importlib.util.find_spec("pyinstrument") is not None


def _package(path: str, name: str = "") -> str:
    if name == "<built-in>:Context.run":
        return "C callbacks (grpc's Cython, invisible to the sampler)"
    if name.startswith("<built-in>:socket."):
        return "socket syscalls"
    if "importlib" in path:
        return "import machinery"
    for needle, package in PACKAGES:
        if needle in path:
            return package
    return "other"


def _ours(path: str) -> str:
    """``sidecar/...`` for a file of this repository's sidecar package, else ''."""
    if "/sidecar/" in path and "/site-packages/" not in path:
        return "sidecar/" + path.split("/sidecar/", 1)[1]
    return ""


def _name(frame: Any) -> str:
    """``file:Class.function``, the file as short as still tells it apart."""
    owner = getattr(frame, "class_name", None)
    qualified = f"{owner}.{frame.function}" if owner else frame.function
    return f"{_short(frame.file_path or '')}:{qualified}"


def _short(path: str) -> str:
    if ours := _ours(path):
        return ours
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    return "/".join(Path(path).parts[-2:]) if path.endswith("__init__.py") else Path(path).name


# What the issue asks to look for: (label, file prefix, ":function" suffix); inclusive shares.
# Matched by function name, not file, where the sidecar's code moves between modules.
WATCH = (
    ("Struct -> dict (struct_to_dict)", "sidecar/", ":struct_to_dict"),
    ("request parsing (events.from_track)", "sidecar/", ":from_track"),
    ("result building (to_result)", "sidecar/", ":to_result"),
    ("call record + URL (TrengoClient.record)", "sidecar/", ":TrengoClient.record"),
    ("per-RPC log line (_log_rpc)", "sidecar/", ":_log_rpc"),
    ("  of which: logging module (Logger.log)", "logging/", ":Logger.log"),
    ("request id (_request_id)", "sidecar/", ":_request_id"),
    ("client creation (TrengoClient.__init__)", "sidecar/", ":TrengoClient.__init__"),
    ("the HTTP exchange, all of it (TrengoClient._exchange)", "sidecar/", ":TrengoClient._exchange"),
    (
        "  of which: the transport (H11Transport.handle_async_request)",
        "sidecar/",
        ":H11Transport.handle_async_request",
    ),
    ("  of which: h11 parsing the answer (Connection.next_event)", "h11/", ":Connection.next_event"),
    ("  of which: reading the body (Response.aread)", "httpx/", ":Response.aread"),
    ("httpx: building the request (TrengoClient._request)", "sidecar/", ":TrengoClient._request"),
    ("httpx: JSON answer (Response.json)", "httpx/", ":Response.json"),
)


def summarise(session_path: Path, text_path: Path, calls: int, in_flight: int, top: int = 16) -> Profile:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    session = Session.load(session_path)
    text_path.write_text(ConsoleRenderer(unicode=False, color=False, time="percent_of_total").render(session))
    root = session.root_frame()
    inclusive: dict[str, float] = defaultdict(float)
    by_package: dict[str, float] = defaultdict(float)
    by_module: dict[str, float] = defaultdict(float)
    idle = 0.0

    def walk(frame: Any, above: frozenset[str], waiting: bool, path: str, parent: str) -> None:
        nonlocal idle
        if frame.is_synthetic:
            if frame.function == "[self]":  # a frame's own time, as a child of it
                if waiting:
                    idle += frame.time
                else:
                    by_package[_package(path, parent)] += frame.time
                    if module := _ours(path):
                        by_module[module] += frame.time
            return
        name = _name(frame)
        if name not in above:  # a recursive function counts once per stack
            inclusive[name] += frame.time
        waiting = waiting or (name.startswith("selectors.py:") and name.endswith("select"))
        for child in frame.children:
            # a builtin's own time goes to the code that called it (stat -> importlib, ...)
            here = path if (frame.file_path or "<built-in>") == "<built-in>" else frame.file_path
            walk(child, above | {name}, waiting, here, name)

    if root is not None:
        walk(root, frozenset(), False, "", "")
    total = root.time if root is not None else 0.0
    busy = max(total - idle, 1e-9)
    ours = {n: t for n, t in inclusive.items() if n.startswith("sidecar/") and "__main__" not in n}
    functions = _shares(ours, busy)[:top]
    spots = []
    for label, prefix, suffix in WATCH:
        share = sum(t for n, t in inclusive.items() if n.startswith(prefix) and n.endswith(suffix)) / busy
        spots.append((label, share))
    packages, modules = _shares(by_package, busy), _shares(by_module, busy)
    return Profile(in_flight, session_path, text_path, busy, idle, calls, functions, packages, spots, modules)


def _shares(seconds: dict[str, float], busy: float) -> list[tuple[str, float]]:
    """(name, share of the busy time), largest first."""
    return sorted(((name, t / busy) for name, t in seconds.items()), key=lambda x: -x[1])


async def _drive(target: str, seconds: float, in_flight: int, pool_size: int, stream: bool) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        pool = await load.warm_pool(stub, f"prof{uuid.uuid4().hex[:6]}", pool_size)  # set-up: ~4% of samples
        if stream:
            point = await load.stream_loop(stub, pool, in_flight, seconds, 0.2)
        else:
            point = await load.closed_loop("sidecar", load.unary_sender(stub, pool), in_flight, seconds, 0.2)
        return point.done


def run(
    sim_url: str, workdir: Path, prefix: Path, seconds: float, in_flight: int, stream: bool = False
) -> Profile:
    """Profile a fresh sidecar under ``in_flight`` warm Tracks (unary, or one Deliver stream)."""
    out = prefix.with_name(f"{prefix.name}-{'stream' if stream else 'unary'}-{in_flight}")
    session_path = out.with_suffix(".pyisession")
    session_path.unlink(missing_ok=True)
    wrapper = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(session_path)]
    sidecar, target = procs.start_sidecar(sim_url, workdir, name=out.name, wrapper=wrapper)
    try:
        calls = asyncio.run(_drive(target, seconds, in_flight, 50, stream))
    finally:
        sidecar.stop(signal.SIGTERM, timeout=60)
    if not session_path.exists():
        raise RuntimeError(f"pyinstrument wrote no session:\n{sidecar.log_tail()}")
    profile = summarise(session_path, out.with_suffix(".txt"), calls, in_flight)
    profile.label = f"Deliver stream at {in_flight}" if stream else f"unary Track at {in_flight}"
    return profile
