"""The code blocks the READMEs mean to run, run: a broken snippet fails here.

A fenced block right after the line ``<!-- snippet: run -->`` is run (CONTRIBUTING.md says so):

- ``console``: each ``$ `` command (with its ``\\`` continuations) in bash, against ``make run`` (the
  demo sidecar and its simulator) on free ports, ``127.0.0.1:50051`` and ``127.0.0.1:8090`` read as
  them. Its output must be the lines shown below it (stdout and stderr): JSON compared as data with
  the timings and timestamps left out, anything else line by line (times masked). Lines that set
  (``export``, ``alias``, ``NAME=...``) apply to the commands after them. A read (GetDelivery,
  health) is asked again for a while, as a person would, while the queue catches up.
- ``python``: with the venv's Python, which has the client installed; it must exit 0.
- ``js``: with ``node -e`` in clients/node (so ``require('./src/client.js')`` resolves); it must exit 0.

The blocks of one file run in order against one fresh ``make run``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import cli_env
from tests.support.make_run import MakeRun
from tests.support.processes import ROOT

MARK = "<!-- snippet: run -->"
DOCUMENTED_ADDRESS, DOCUMENTED_SIM = "127.0.0.1:50051", "127.0.0.1:8090"
# timings and clocks: never the same twice
VOLATILE = {"duration_ms", "accepted_at", "next_attempt_at", "created_at"}
READS = ("GetDelivery", "ListDeliveries", "Health/Check", "deliveries get", "deliveries list")
FILES = ["README.md", "docs/session.md", "clients/python/README.md", "clients/node/README.md"]
SETTING = re.compile(r"(export |alias )?[A-Za-z_][A-Za-z0-9_]*=")  # a line that sets, for the lines after it
CLOCK = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")  # a time in a text line


@dataclass(frozen=True)
class Block:
    path: str
    line: int  # where the block's fence is, for the failure message
    language: str
    code: str


def marked_blocks(path: str) -> list[Block]:
    lines = (ROOT / path).read_text().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = lines[index + 1]
        assert fence.startswith("```"), f"{path}:{index + 1}: {MARK} must come right before a fenced block"
        end = lines.index("```", index + 2)
        blocks.append(Block(path, index + 2, fence[3:].strip(), "\n".join(lines[index + 2 : end]) + "\n"))
    return blocks


def commands(console: str) -> list[tuple[str, str]]:
    """The ``$ `` commands of a console block, each with the output shown after it."""
    found: list[tuple[str, list[str]]] = []
    continued = False
    for line in console.splitlines():
        if line.startswith("$ ") or continued:
            if continued:
                found[-1] = (found[-1][0] + "\n" + line, [])
            else:
                found.append((line[2:], []))
            continued = line.endswith("\\")
        elif found:
            found[-1][1].append(line)
    return [(command, "\n".join(output).strip()) for command, output in found]


def json_values(text: str) -> list[Any] | None:
    """Every JSON value in ``text`` in order, without the volatile keys; None if it is not all JSON."""
    decoder, values, at = json.JSONDecoder(), [], 0
    text = text.strip()
    try:
        while at < len(text):
            value, at = decoder.raw_decode(text, at)
            values.append(_without_volatile(value))
            while at < len(text) and text[at].isspace():
                at += 1
    except json.JSONDecodeError:
        return None
    return values


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def same_output(shown: str, got: str) -> bool:
    expected = json_values(shown) if shown.startswith(("{", "[")) else None
    if expected is not None:
        return json_values(got) == expected
    return _lines(got.strip()) == _lines(shown)


def _lines(text: str) -> list[str]:
    return [CLOCK.sub("<time>", line.rstrip()) for line in text.splitlines()]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path, {})
    try:
        yield run
    finally:
        run.kill()
        shutil.rmtree(run.state, ignore_errors=True)


def test_every_file_marks_blocks_to_run() -> None:
    for path in FILES:
        assert marked_blocks(path), f"{path} has no {MARK} block: the test would prove nothing"


@pytest.mark.parametrize("path", FILES)
def test_the_marked_snippets_run_as_shown(path: str, demo: MakeRun) -> None:
    sim = f"127.0.0.1:{demo.sim_port}"
    for block in marked_blocks(path):
        code = block.code.replace(DOCUMENTED_ADDRESS, demo.address).replace(DOCUMENTED_SIM, sim)
        where = f"{block.path}:{block.line}"
        if block.language == "console":
            run_console(code, where, demo.address)
        elif block.language == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, f"{where}: the snippet failed:\n{done.stdout}\n{done.stderr}"
        elif block.language == "js":
            node = shutil.which("node")
            assert node, "node is not installed: make test needs Node.js 20"
            done = subprocess.run([node, "-e", code], cwd=ROOT / "clients" / "node", env=cli_env(),
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, f"{where}: the snippet failed:\n{done.stdout}\n{done.stderr}"
        else:
            pytest.fail(f"{where}: no runner for a {block.language!r} block")


def run_console(code: str, where: str, address: str) -> None:
    """SIDECAR_LISTEN: where a command that relies on the default address (the CLI) finds the demo."""
    exports: list[str] = []
    ran = 0
    for command, shown in commands(code):
        if SETTING.match(command):
            exports.append(command)
            continue
        script = "\n".join(["shopt -s expand_aliases", *exports, command])
        ends = time.monotonic() + (20 if any(read in command for read in READS) else 0)
        while True:
            done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=cli_env(SIDECAR_LISTEN=address),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=60)  # fmt: skip
            if same_output(shown, done.stdout) or time.monotonic() >= ends:
                break
            time.sleep(0.2)
        assert same_output(shown, done.stdout), f"{where}: $ {command}\nshown:\n{shown}\ngot:\n{done.stdout}"
        ran += 1
    assert ran, f"{where}: a console block with no command"


def test_a_changed_output_or_a_failing_snippet_is_caught() -> None:
    """The comparison itself: a different id fails, a different timing does not; text is compared."""
    shown = '{\n  "contact_id": "1",\n  "duration_ms": 2.5\n}'
    assert same_output(shown, '{"contact_id": "1", "duration_ms": 9.1}')
    assert not same_output(shown, '{"contact_id": "2", "duration_ms": 2.5}')
    assert not same_output("exit 73", "exit 0")
    assert commands("$ a \\\n  b\nout\n$ c\n") == [("a \\\n  b", "out"), ("c", "")]
