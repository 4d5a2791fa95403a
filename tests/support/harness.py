"""Real parts for tests: the sidecar on a real port, on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from sidecar.api.app import Sidecar
from sidecar.config.load import build_config
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

TOKEN = "test-token"
EMAIL_CHANNEL = 405980
SMS_CHANNEL = 405981
TEMPLATES = [
    {"from": "Product Purchased", "to": "{{ event }} from our store"},
    {"from": "Added to cart", "to": "Product was of value:{{ revenue }}"},
    {"from": "Checked Out", "to": "Cart was checked out"},
    {"from": "No Subject", "to": ""},
]


def struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """A plain dict as a google.protobuf.Struct (traits, properties, context, a RudderStack event)."""
    return json_format.ParseDict(data, struct_pb2.Struct())


def pieces(secret: str, size: int = 4) -> list[str]:
    """Every run of ``size`` characters of ``secret`` (the whole of it when shorter): none may leak."""
    return [secret[i : i + size] for i in range(max(1, len(secret) - size + 1))]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a sidecar CLI subprocess: this one without TRENGO_*/SIDECAR_*/OTEL_* (a
    developer's shell must not change the config under test), unbuffered, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRENGO_", "SIDECAR_", "OTEL_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def sidecar_config(base_url: str, **overrides: Any) -> dict[str, Any]:
    """A config (file keys) for tests: the simulator, no rate limit, fast retries.

    An override of None drops the key (``apiToken=None`` with ``apiTokenFile=...``).
    """
    raw: dict[str, Any] = {
        "apiToken": TOKEN,
        "baseUrl": base_url,
        "channelId": EMAIL_CHANNEL,
        "channelIdentifier": "auto",
        "eventTemplateMap": TEMPLATES,
        "listen": "127.0.0.1:0",
        "rateLimitPerMinute": 0,
        "backoffBaseSeconds": 0.01,
        "backoffMaxSeconds": 0.05,
        "requestTimeoutSeconds": 2,
        "shutdownGraceSeconds": 1,
    }
    raw.update(overrides)
    return {key: value for key, value in raw.items() if value is not None}


class SidecarThread:
    """Runs a real Sidecar (grpc.aio server) on its own loop in a daemon thread."""

    def __init__(self, raw_config: Mapping[str, Any]) -> None:
        self.config = build_config(raw_config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sidecar: Sidecar | None = None
        self.port = 0

    def __enter__(self) -> SidecarThread:
        self._thread.start()
        self.sidecar = self.call(self._make())
        # No Trengo check at start: tests count the calls the sidecar makes (tests/e2e/test_readiness.py).
        self.port = self.call(self.sidecar.start(check_trengo=False))
        return self

    async def _make(self) -> Sidecar:
        return Sidecar(self.config)  # built on the loop: grpc.aio binds its server to it

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if self.sidecar is not None and self._thread.is_alive():
            self.call(self.sidecar.stop(grace=0.5))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.sidecar = None

    def stub(self) -> tuple[grpc.Channel, pb_grpc.TrengoSidecarStub]:
        channel = grpc.insecure_channel(self.address)
        return channel, pb_grpc.TrengoSidecarStub(channel)
