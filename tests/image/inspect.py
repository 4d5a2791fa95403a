"""`make test-image`, step 3: what is inside the built image, read from its files.

Its size (under a ceiling), and what the Dockerfile promises it leaves in the builder: no C
compiler, no grpcio-tools (nor its protoc), no source tree. The image is mounted read-only
through a working container, so nothing in it runs. `python -m tests.image.inspect IMAGE`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc")
BUILDER_ONLY = ("grpc_tools", "grpcio_tools", "mypy_protobuf", "mypy-protobuf")


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def image_size(image: str) -> str:
    """The image's size as buildah (and `docker images`) reports it, e.g. "246 MB"."""
    listed = json.loads(buildah("images", "--json", image))
    return str(listed[0]["size"])


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, hard links once (what the uncompressed layers hold)."""
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def forbidden(root: Path) -> list[str]:
    found = []
    for bindir in ("usr/bin", "usr/local/bin", "bin", "opt/venv/bin"):
        for name in COMPILERS:
            if (root / bindir / name).exists():
                found.append(f"/{bindir}/{name}")
    for site in root.glob("opt/venv/lib/python3*/site-packages"):
        for entry in site.iterdir():
            if entry.name.lower().split("-")[0] in BUILDER_ONLY:
                found.append(f"/{entry.relative_to(root)}")
    for path in ("src", "opt/tools", "src/protos"):
        if (root / path).exists():
            found.append(f"/{path}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image")
    parser.add_argument("--max-mb", type=float, required=True)
    args = parser.parse_args()

    container = buildah("from", "--pull=never", "--quiet", args.image)
    try:
        root = Path(buildah("mount", container))
        size_mb = tree_bytes(root) / 1e6
        venv_mb = tree_bytes(root / "opt" / "venv") / 1e6
        bad = forbidden(root)
        packages = sorted(p.name for p in root.glob("opt/venv/lib/python3*/site-packages/*.dist-info"))
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    print(f"test-image: image {args.image}: {size_mb:.1f} MB of files ({image_size(args.image)} as buildah "
          f"counts it; ceiling {args.max_mb:.0f} MB), of which /opt/venv {venv_mb:.1f} MB with "
          f"{len(packages)} packages", flush=True)  # fmt: skip
    if bad:
        raise SystemExit(f"test-image: FAILED: the image holds what stays in the builder: {bad}")
    if not any(p.startswith("grpcio-") for p in packages):
        raise SystemExit(
            f"test-image: FAILED: no grpcio in /opt/venv, so the check above proves nothing: {packages}"
        )
    print("test-image: no compiler, no grpcio-tools, no source tree inside", flush=True)
    if size_mb > args.max_mb:
        raise SystemExit(f"test-image: FAILED: {size_mb:.1f} MB is over the {args.max_mb:.0f} MB ceiling")


if __name__ == "__main__":
    main()
