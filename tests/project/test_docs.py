"""The documentation says what the code does: README.md stays short and its links land, every promise in
docs/guarantees.md names a test that exists, every config key and variable is in docs/configuration.md,
every ErrorInfo reason a caller can get is in docs/errors.md.

The site itself (every page in the nav, every link and anchor between pages) is checked by
`mkdocs build --strict`, which `make test` runs (`make docs-build`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import markdown
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Reasons that never reach a caller: class defaults that every raise replaces, and the queue worker's
# own signal that its lease ran out (the event is given back, not failed: sidecar/queue/worker.py).
INTERNAL_REASONS = {"INTERNAL", "FAILED_PRECONDITION", "QUEUE_LEASE_LOST"}


def anchors(page: Path) -> set[str]:
    """The ids of page's headings as mkdocs makes them, kept only where GitHub makes the same one."""
    md = markdown.Markdown(extensions=["toc"])
    md.convert(page.read_text())
    ids: set[str] = set()

    def walk(tokens: list[dict]) -> None:
        for token in tokens:
            github = re.sub(r"[^\w\- ]", "", token["name"].lower()).replace(" ", "-")
            if token["id"] == github:
                ids.add(token["id"])
            walk(token["children"])

    walk(md.toc_tokens)
    return ids


def relative_links(page: Path) -> list[str]:
    return [link for link in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", link)]


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", ["README.md", "CONTRIBUTING.md"])
def test_every_link_of_the_top_level_pages_lands_on_a_file_and_a_heading(page):
    source = ROOT / page
    links = relative_links(source)
    assert page != "README.md" or len(links) >= 20  # the docs map and the guarantees table
    for link in links:
        path, _, anchor = link.partition("#")
        target = (source.parent / path).resolve() if path else source
        assert target.exists(), f"{page}: {link} points at nothing"
        if anchor:
            assert target.suffix == ".md", f"{page}: {link}"
            assert anchor in anchors(target), f"{page}: {link}: no such heading in {target.name}"


def test_the_readme_points_at_every_page_of_the_site():
    linked = {Path(link.partition("#")[0]).name for link in relative_links(README)}
    included = {"index.md", "kubernetes.md", "contributing.md", "python-client.md", "node-client.md",
                "benchmarks-queue.md", "trengo-followups-api.md"}  # home, pages of other READMEs, sub-pages
    missing = sorted(page.name for page in DOCS.glob("*.md") if page.name not in linked | included)
    assert not missing, f"README's documentation map lacks {missing}"


def test_every_test_a_guarantee_names_exists():
    text = (DOCS / "guarantees.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 50
    for file, test in named:
        found = list((ROOT / "tests").rglob(file))
        assert found, f"guarantees.md names {file}, which tests/ does not have"
        assert any(re.search(rf"def {test}\b", f.read_text()) for f in found), f"{file}::{test} is gone"


def test_every_config_key_and_variable_is_documented():
    """From `trengo-sidecar --help`, which lists every variable beside its key."""
    help_text = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    pairs = re.findall(r"^  ((?:TRENGO|SIDECAR)_[A-Z_]+) +(\w+)", help_text, re.MULTILINE)
    assert len(pairs) >= 45
    page = (DOCS / "configuration.md").read_text()
    for variable, key in pairs:
        assert f"`{key}`" in page, f"configuration.md lacks the key {key}"
        assert f"`{variable}`" in page, f"configuration.md lacks the variable {variable}"


def test_every_reason_a_caller_can_get_is_in_the_errors_page():
    source = "\n".join(p.read_text() for p in (ROOT / "sidecar").rglob("*.py"))
    reasons = set(re.findall(r"reason ?= ?\"([A-Z][A-Z_]+)\"", source)) - INTERNAL_REASONS
    assert len(reasons) >= 20
    page = (DOCS / "errors.md").read_text()
    missing = sorted(r for r in reasons if f"`{r}`" not in page)
    assert not missing, f"errors.md lacks {missing}"


def test_every_metric_is_documented():
    """Each metric name the sidecar registers (by its module's PREFIX) is on the operating or queue page."""
    names = set()
    for module in (ROOT / "sidecar").rglob("*.py"):
        text = module.read_text()
        prefix = re.search(r'^PREFIX = "(\w+)"', text, re.MULTILINE)
        if prefix:
            names |= {prefix[1] + "_" + name for name in re.findall(r'f"\{PREFIX\}_(\w+)"', text)}
    assert len(names) >= 20
    pages = (DOCS / "operating.md").read_text() + (DOCS / "queue.md").read_text()
    # `trengo_sidecar_cache_{hits,misses}_total` names two metrics: spell each out.
    for head, alternatives, tail in re.findall(r"(\w+)\{(\w+(?:,\w+)+)\}(\w*)", pages):
        pages += " ".join(f" {head}{alternative}{tail} " for alternative in alternatives.split(","))
    missing = sorted(name for name in names if not re.search(rf"\b{name}(_total)?\b", pages))
    assert not missing, f"undocumented metrics: {missing}"


def test_every_documented_default_is_the_default():
    """The table's default column against `--check-config`, which marks each value that is a default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRENGO_", "SIDECAR_"))}
    env |= {"TRENGO_API_TOKEN": "a-token", "TRENGO_CHANNEL_ID": "405980"}
    report = subprocess.run(
        [sys.executable, "-m", "sidecar", "--check-config"], capture_output=True, text=True, check=True,
        cwd=ROOT, env=env,
    ).stdout
    actual = dict(re.findall(r"^(\w+): (.*?)  # default$", report, re.MULTILINE))
    compared = 0
    for keys_cell, _, default_cell in re.findall(
        r"^\| (`[^|]+) \| ([^|]*) \| ([^|]*) \|", (DOCS / "configuration.md").read_text(), re.MULTILINE
    ):
        keys = [k for k in re.findall(r"`([\w\[\].]+)`", keys_cell) if k in actual]
        defaults = [d.strip().strip("`") for d in default_cell.split(",")]
        if len(defaults) != len(keys):
            defaults = [default_cell.strip().strip("`")] * len(keys)
        for key, documented in zip(keys, defaults, strict=True):
            assert same_value(documented, actual[key].strip("'")), f"{key}: documented {documented!r}"
            compared += 1
    assert compared >= 40


def same_value(documented: str, actual: str) -> bool:
    documented = {"off": "", "[]": "[]", "{}": "[]"}.get(documented, documented)
    actual = {"{}": "[]"}.get(actual, actual)
    try:
        return float(documented) == float(actual)
    except ValueError:
        return documented == actual
