"""The real SDKs, each sending identify + track for a range of people to a data-plane URL and flushing.

rudder-sdk-python and segment-analytics-python run in this process (their Client classes, not the
module-level singletons); @rudderstack/rudder-sdk-node runs as a node process (tests/node/). Each
returns what its SDK reported as failed: an HTTP status per event (or an error's text).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "clients" / "node" / "node_modules"
SDKS = ("rudder-python", "segment-python", "rudder-node")


def _person(n: int) -> tuple[str, str]:
    person = f"p{n:03d}"
    return person, f"{person}@example.com"


def _python(client_class: Any, url: str, key: str, people: range, retries: int) -> list[Any]:
    errors: list[Any] = []

    def failed(error: Exception, batch: list[Any]) -> None:
        errors.extend([getattr(error, "status", str(error))] * len(batch))

    client = client_class(write_key=key, host=url, on_error=failed, max_retries=retries, upload_interval=0.1)
    for n in people:
        person, email = _person(n)
        client.identify(person, {"email": email, "name": f"Person {n}"})
        client.track(person, "Product Purchased", {"revenue": n}, context={"traits": {"email": email}})
    client.flush()
    client.join()
    return errors


def rudder_python(url: str, key: str, people: range, retries: int = 3) -> list[Any]:
    from rudderstack.analytics.client import Client

    return _python(Client, url, key, people, retries)


def segment_python(url: str, key: str, people: range, retries: int = 3) -> list[Any]:
    from segment.analytics.client import Client

    return _python(Client, url, key, people, retries)


def rudder_node(url: str, key: str, people: range, retries: int = 3) -> list[Any]:
    script = ROOT / "tests" / "node" / "rudder_sdk_node.js"
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    args = ["node", str(script), url, key, str(people.start), str(people.stop), str(retries)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    errors: list[Any] = json.loads(done.stdout.strip().splitlines()[-1])["errors"]
    return errors


SEND: dict[str, Callable[..., list[Any]]] = {
    "rudder-python": rudder_python,
    "segment-python": segment_python,
    "rudder-node": rudder_node,
}
