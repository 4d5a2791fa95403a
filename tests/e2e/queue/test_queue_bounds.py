"""The queue's bounds, end to end on a real sidecar and a real store (SQLite, and a real PostgreSQL):
queueMaxDepth and queueMaxBytes (QUEUE_FULL over gRPC and the HTTP ingest, nothing written), failed
events pruned after queueFailedRetentionSeconds, a listing of 1,000 events of 1 MB that costs the
sidecar's process little memory, maxWatchers, and what 300 idle watchers cost Enqueue.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.observe.metrics import install_metrics
from sidecar.queue.backends import queue_on
from sidecar.queue.store import Limits, NewJob
from sidecar.simulator import SimulatorControl
from sidecar.state import open_state
from tests.support.grpc_helpers import failure
from tests.support.harness import SidecarThread
from tests.support.ingest_helpers import ingest_config, post, url_of
from tests.support.ingest_helpers import track as ingest_track
from tests.support.queue_helpers import FAST_QUEUE, order, settled, wait_for
from tests.support.queue_procs import sidecar_process
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

TICKETS = "/api/v2/tickets"
# Tracks for people with no contact, queueContactWaitSeconds 0: they fail at once and stay held.
FAILED = pb.DELIVERY_STATE_FAILED


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


def queue_full(call: Callable[[], Any]) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED and found.reason == "QUEUE_FULL", found
    assert found.retry_delay and found.retry_delay > 0, found  # RetryInfo
    return found


def not_found(stub: pb_grpc.TrengoSidecarStub, message_id: str) -> bool:
    try:
        stub.GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return False


def test_a_queue_at_max_depth_answers_queue_full_and_writes_nothing(
    make_sidecar: Callable[..., SidecarThread], store: str, control: SimulatorControl
) -> None:
    control.add_fault(method="POST", path=TICKETS, status=422, count=1000)  # failed at once: still held
    thread = make_sidecar(**ingest_config(store, queueMaxDepth=3, queueContactWaitSeconds=0))
    registry = install_metrics(thread.sidecar, process=False)
    _, stub = thread.stub()
    ids = [stub.Enqueue(order("ann", n, message_id=f"m{n}"), timeout=5).message_id for n in range(3)]
    settled(stub, ids)
    assert stub.Enqueue(order("ann", 0, message_id="m0"), timeout=5).duplicate  # a duplicate takes no room
    found = queue_full(lambda: stub.Enqueue(order("bob", 9, message_id="over"), timeout=5))
    assert "queueMaxDepth 3" in found.message
    assert not_found(stub, "over")
    answer = post(url_of(thread), "batch", {"batch": [ingest_track(1), ingest_track(2)]})
    assert answer.status_code == 503 and answer.json()["code"] == "QUEUE_FULL", answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    assert not_found(stub, ingest_track(1)["messageId"]) and not_found(stub, ingest_track(2)["messageId"])
    wait_for(lambda: registry.get_sample_value(
        "trengo_sidecar_queue_limit_usage_ratio", {"limit": "queueMaxDepth"}) == 1.0, "the usage metric")
    assert registry.get_sample_value("trengo_sidecar_rpcs_total",
                                     {"method": "Enqueue", "code": "RESOURCE_EXHAUSTED"}) == 1  # fmt: skip


def test_a_queue_at_max_bytes_answers_queue_full_and_writes_nothing(
    make_sidecar: Callable[..., SidecarThread], store: str, control: SimulatorControl
) -> None:
    control.add_fault(method="POST", path=TICKETS, status=422, count=1000)
    thread = make_sidecar(**ingest_config(store, queueMaxBytes=40_000, queueContactWaitSeconds=0))
    registry = install_metrics(thread.sidecar, process=False)
    _, stub = thread.stub()
    big = order("ann", 1, message_id="big")
    big.track.properties.update({"pad": "x" * 30_000})
    settled(stub, [stub.Enqueue(big, timeout=5).message_id])
    held = lambda: registry.get_sample_value("trengo_sidecar_queue_held_bytes") or 0  # noqa: E731
    wait_for(lambda: held() > 30_000, "the held bytes metric")
    usage = registry.get_sample_value("trengo_sidecar_queue_limit_usage_ratio", {"limit": "queueMaxBytes"})
    assert usage is not None and 0.75 < usage < 1.0
    second = order("bob", 2, message_id="second")
    second.track.properties.update({"pad": "y" * 10_000})
    found = queue_full(lambda: stub.Enqueue(second, timeout=5))
    assert "queueMaxBytes 40000" in found.message
    assert not_found(stub, "second")
    wide = ingest_track(3, properties={"pad": "z" * 10_000})
    answer = post(url_of(thread), "track", wide)
    assert answer.status_code == 503 and answer.json()["code"] == "QUEUE_FULL", answer.text
    assert not_found(stub, wide["messageId"])
    assert stub.Enqueue(order("cid", 3, message_id="small"), timeout=5)  # a small one still fits


def test_failed_events_are_pruned_after_their_retention_with_their_changes(
    make_sidecar: Callable[..., SidecarThread], store: str, control: SimulatorControl
) -> None:
    control.add_fault(method="POST", path=TICKETS, status=422, count=1000)
    thread = make_sidecar(store=store, **FAST_QUEUE, queueFailedRetentionSeconds=2, queueMaxDepth=2,
                         queueContactWaitSeconds=0)  # fmt: skip
    _, stub = thread.stub()
    ids = [stub.Enqueue(order(p, 1, message_id=f"f-{p}"), timeout=5).message_id for p in ("ann", "bob")]
    assert {s.state for s in settled(stub, ids).values()} == {FAILED}
    watched = next(iter(stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=0), timeout=5)))
    assert watched.status.message_id in ids  # their changes are in the log
    queue_full(lambda: stub.Enqueue(order("cid", 1), timeout=5))  # the failed ones hold the room
    wait_for(lambda: all(not_found(stub, m) for m in ids), "the failed events to be pruned", 30)
    listed = stub.ListDeliveries(pb.ListDeliveriesRequest(state=FAILED), timeout=5)
    assert list(listed.deliveries) == []
    watch = stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=0), timeout=1.5)
    with pytest.raises(grpc.RpcError) as caught:  # the log is empty: the stream waits until its deadline
        next(iter(watch))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Enqueue(order("cid", 1, message_id="room"), timeout=5).message_id == "room"


# --- a sidecar process: memory, watchers ----------------------------------------------------------------


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (the peak since the last reset) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def reset_peak(pid: int) -> None:
    """VmHWM starts again from VmRSS (Linux >= 4.0): a call's peak is then measured, not only what it
    left behind (1 MB buffers are mmap'ed and given back at once, so VmRSS after would miss them)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


FILL_POSTGRES = """
INSERT INTO queue_deliveries (message_id, person, event, state, active, accepted_at, retry_from,
                              next_attempt_at, error, finished_at, bytes)
SELECT 'big-' || lpad(i::text, 4, '0'), 'p' || i,
       jsonb_build_object('pad', repeat(md5(i::text), %(repeat)s)), 'failed', FALSE,
       extract(epoch FROM now()), extract(epoch FROM now()), extract(epoch FROM now()), %(error)s::jsonb,
       extract(epoch FROM now()), 32 * %(repeat)s
FROM generate_series(0, %(count)s - 1) AS i
"""


def fill_failed(store: str, count: int, size: int) -> None:
    """``count`` failed events of ``size`` bytes each (refused at acceptance), straight into the store."""

    async def fill() -> None:
        state = open_state(store)
        await state.start()
        queue = await queue_on(state, Limits(max_depth=10 * count, max_bytes=4 * count * size))
        assert queue is not None
        error = {"code": 3, "message": "refused", "reason": "INVALID_EVENT"}
        if state.scheme == "postgresql":  # 1 GB through the client takes minutes: made in the server
            async with state.pool.connection() as conn:
                params = {"count": count, "repeat": size // 32, "error": json.dumps(error)}
                await conn.execute(FILL_POSTGRES, params)
            await state.aclose()
            return
        for first in range(0, count, 25):
            jobs = [NewJob(f"big-{i:04d}", f"p{i}", {"pad": secrets.token_hex(size // 2)}, error=error)
                    for i in range(first, min(first + 25, count))]  # fmt: skip
            assert all(await queue.enqueue_many(jobs))
        await state.aclose()

    asyncio.run(fill())


def test_listing_1000_failed_events_of_1_mb_raises_rss_by_under_20_mb(sim, store: str, tmp_path: Path):
    """The sidecar process's peak RSS during the listing, against its RSS before it."""
    fill_failed(store, 1000, 1024 * 1024)
    process = sidecar_process(tmp_path, sim.base_url, "big", store=store, queueMaxBytes=2 << 30).start()
    try:
        stub, pid = process.stub(), process.popen.pid  # type: ignore[union-attr]
        stub.ListDeliveries(pb.ListDeliveriesRequest(state=FAILED, limit=10), timeout=30)  # warmed up
        before = memory_kib(pid)
        reset_peak(pid)
        page = stub.ListDeliveries(pb.ListDeliveriesRequest(state=FAILED, limit=1000), timeout=120)
        grown, after = memory_kib(pid, "VmHWM") - before, memory_kib(pid) - before
        print(f"\nListDeliveries of 1,000 failed 1 MB events ({store.split(':')[0]}): peak RSS +{grown} KiB, "
              f"after +{after} KiB")  # fmt: skip
        assert len(page.deliveries) == 1000 and page.deliveries[0].message_id == "big-0000"
        assert all(d.error.reason == "INVALID_EVENT" for d in page.deliveries)
        assert grown < 20 * 1024, f"RSS grew {grown} KiB"
    finally:
        process.stop()


async def open_watchers(address: str, count: int) -> tuple[list[Any], list[grpc.aio.AioRpcError], Any]:
    """``count`` WatchDeliveries streams; the ones served (waiting for changes) and the ones refused."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.TrengoSidecarStub(channel)
    calls = [stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=0)) for _ in range(count)]

    async def first(call: Any) -> grpc.aio.AioRpcError | None:
        try:
            await asyncio.wait_for(call.read(), 3)
        except TimeoutError:
            return None  # served, and idle: nothing has changed
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("a change in an empty queue")

    outcomes = await asyncio.gather(*(first(call) for call in calls))
    served = [call for call, outcome in zip(calls, outcomes, strict=True) if outcome is None]
    return served, [o for o in outcomes if o is not None], channel


def test_the_65th_watcher_is_refused_and_a_closed_one_makes_room(sim, tmp_path: Path):
    process = sidecar_process(tmp_path, sim.base_url, "w", store=f"sqlite:///{tmp_path}/s.db").start()

    async def go() -> None:
        served, refused, channel = await open_watchers(process.address, 65)
        assert len(served) == 64 and len(refused) == 1
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "maxWatchers" in (refused[0].details() or "")
        served[0].cancel()
        again, refused_again, second = await open_watchers(process.address, 1)
        assert len(again) == 1 and refused_again == []
        await channel.close()
        await second.close()

    try:
        asyncio.run(go())
    finally:
        process.stop()


def enqueue_latencies(stub: pb_grpc.TrengoSidecarStub, label: str, count: int = 200) -> list[float]:
    taken = []
    for n in range(count):
        started = time.perf_counter()
        stub.Enqueue(order(f"{label}{n % 20}", n, message_id=f"{label}-{n}"), timeout=10)
        taken.append(time.perf_counter() - started)
    return sorted(taken)


@pytest.fixture
def watched_process(sim, tmp_path: Path) -> Iterator[Any]:
    # maxWatchers 300 on purpose: every one of the 300 polls, so this measures the polls' cost itself.
    process = sidecar_process(tmp_path, sim.base_url, "lat", store=f"sqlite:///{tmp_path}/s.db",
                              maxWatchers=300, queueConcurrency=0, **FAST_QUEUE)  # fmt: skip
    yield process.start()
    process.stop()


def test_300_idle_watchers_and_enqueue_latency(watched_process: Any) -> None:
    """Reports Enqueue's latency (p50, p99, worst of 200) with no watcher and with 300 idle ones polling
    (each twice a second) on SQLite; asserts only what the run must show: all 300 served, 400 accepted."""
    stub = watched_process.stub()
    enqueue_latencies(stub, "warm", 20)
    alone = enqueue_latencies(stub, "alone")
    results: dict[str, Any] = {}

    async def watched() -> None:
        served, refused, channel = await open_watchers(watched_process.address, 300)
        results["served"], results["refused"] = len(served), len(refused)
        results["with"] = await asyncio.to_thread(enqueue_latencies, stub, "with")
        await channel.close()

    asyncio.run(watched())
    with_watchers = results["with"]

    def figures(taken: list[float]) -> str:
        p50, p99, worst = (taken[len(taken) // 2], taken[-3], taken[-1])
        return f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms"

    print(f"\nEnqueue on SQLite, 200 calls: no watcher: {figures(alone)}; "
          f"300 idle watchers: {figures(with_watchers)}")  # fmt: skip
    assert (results["served"], results["refused"]) == (300, 0)
    assert len(alone) == len(with_watchers) == 200
