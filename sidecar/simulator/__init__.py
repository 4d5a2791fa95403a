"""A local stand-in for Trengo's REST API v2, served over real HTTP for tests, benchmarks and demos.

`Simulator` runs on the caller's event loop; `SimulatorThread` runs one on its own loop in a daemon
thread, for synchronous tests. Either is driven through the `/_sim` control API (`SimulatorControl`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from aiohttp import web

from sidecar.simulator.app import create_app
from sidecar.simulator.control import SimulatorControl
from sidecar.simulator.state import SimState

__all__ = ["SimState", "Simulator", "SimulatorControl", "SimulatorThread"]

# Handlers still sleeping in a scripted delay must not hold up shutdown for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT = 0.5


class Simulator:
    """The simulator server; `state` is its store, `base_url` ends in `/api/v2` once started."""

    def __init__(
        self, tokens: Iterable[str] = ("test-token",), rate_limit_per_minute: int = 0, extra_channels: int = 0
    ) -> None:
        self.state = SimState(tokens, rate_limit_per_minute, extra_channels)
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(create_app(self.state), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        real_port = runner.addresses[0][1]  # port 0 asks the OS; the socket knows which one it gave
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{real_port}/api/v2"
        return self.base_url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class SimulatorThread:
    """A `Simulator` on its own event loop in a daemon thread; a context manager.

    `state` is shared with the server thread: read it only while no request is in flight, or use
    `control`, which goes over HTTP.
    """

    def __init__(
        self,
        tokens: Iterable[str] = ("test-token",),
        rate_limit_per_minute: int = 0,
        extra_channels: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.simulator = Simulator(tokens, rate_limit_per_minute, extra_channels)
        self.state = self.simulator.state
        self.base_url = ""
        self._address = (host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._control: SimulatorControl | None = None

    @property
    def control(self) -> SimulatorControl:
        if self._control is None:
            if not self.base_url:
                raise RuntimeError("simulator not started")
            self._control = SimulatorControl(self.base_url)
        return self._control

    def start(self, timeout: float = 10.0) -> str:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._run, args=(loop, ready, failure), name="trengo-simulator", daemon=True
        )
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("simulator did not start in time")
        if failure:
            thread.join(timeout)
            raise failure[0]
        self._loop, self._thread = loop, thread
        self.base_url = self.simulator.base_url
        return self.base_url

    def _run(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.simulator.start(*self._address))
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()  # until stop() schedules loop.stop
        finally:
            loop.run_until_complete(self.simulator.stop())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and its thread; safe to call more than once."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if self._control is not None:
            self._control.close()
            self._control = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
