"""The facts a reader needs to compare two runs: CPU, cores, OS, library versions, commit, date."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("grpcio", "protobuf", "httpx", "httpcore", "h11", "aiohttp")
NO_SNIFFIO = (
    "absent: httpcore retries `import sniffio` on every lock/event it sets up "
    "(encode/httpcore#1103), which slows the raw httpx client here"
)


def machine() -> dict[str, str]:
    """Label to value, in the order the page lists them."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return {
        "CPU": _cpu(),
        "cores (nproc)": str(os.cpu_count() or "?"),
        "usable cores": str(usable),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "libraries": ", ".join(f"{name} {_version(name)}" for name in LIBRARIES),
        "sniffio": "installed" if importlib.util.find_spec("sniffio") is not None else NO_SNIFFIO,
        "commit": _commit() or "unknown",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        return ""


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"
