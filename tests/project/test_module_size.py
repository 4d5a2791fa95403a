"""No module under sidecar/ grows past 400 lines (issue 19): a file that long is doing two jobs, so split it
along a seam (its SQL into sql/*.sql, its rows, its parsing) rather than raise the limit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar"
MAX_LINES = 400


def line_counts(root: Path) -> dict[str, int]:
    """Each module under root (its path from root's parent) -> its line count."""
    return {
        str(path.relative_to(root.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
    }


def test_the_walk_finds_the_modules() -> None:
    # A walk that found nothing (a moved package, a wrong root) would pass the check below vacuously.
    counts = line_counts(SIDECAR)
    assert "sidecar/__main__.py" in counts
    assert len(counts) > 40


def test_no_module_under_sidecar_passes_400_lines() -> None:
    too_long = {path: n for path, n in line_counts(SIDECAR).items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split each along a seam): {too_long}"


def test_the_check_catches_a_long_module(tmp_path: Path) -> None:
    # The check can fail: a 401-line module under a scanned tree is counted as such.
    package = tmp_path / "pkg" / "sub"
    package.mkdir(parents=True)
    (package / "long.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    assert line_counts(tmp_path / "pkg") == {"pkg/sub/long.py": MAX_LINES + 1}

