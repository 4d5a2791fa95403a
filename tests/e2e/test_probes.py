"""Probes that say what they mean: ``liveness`` and ``readiness`` never depend on Trengo, the token or
the store; ``trengo.sidecar.v1.TrengoSidecar`` says whether a call can succeed now (docs/probes.md).

A revoked token must not restart the sidecar (a restart cannot fix it) nor take the app's pod out of
its Service: the pod-level names stay SERVING, the service turns NOT_SERVING, and a metric and an
alert of deploy/prometheus/alerts.yaml say why.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import signal
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.api.app import SERVICE
from sidecar.api.readiness import LIVENESS, PROBES, READINESS, Conditions, decide
from sidecar.observe.metrics import install_metrics
from tests.e2e.test_readiness import WRONG, identify
from tests.support.grpc_helpers import failure, health_status
from tests.support.harness import TOKEN, free_port, struct
from tests.support.processes import NOT_SERVING, SERVING, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

PROCESS_LEVEL = ("starting", "draining")  # the only conditions readiness reads
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"
COMPARE = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
Sample = tuple[str, dict[str, str], float]


def firing(alert: str, samples: list[Sample]) -> list[dict[str, str]]:
    """The series for which ``alert``'s expression holds now, for the simple form the state alerts
    use: ``AGG by (...) (SELECTOR) OP NUMBER`` (one sidecar, so the aggregation keeps the value)."""
    [rule] = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]
              if r["alert"] == alert]  # fmt: skip
    node = promql_parser.parse(rule["expr"])
    assert isinstance(node, promql_parser.BinaryExpr) and isinstance(node.rhs, promql_parser.NumberLiteral)
    assert isinstance(node.lhs, promql_parser.AggregateExpr), rule["expr"]
    selector = node.lhs.expr
    assert isinstance(selector, promql_parser.VectorSelector), rule["expr"]
    holds = COMPARE[str(node.op)]
    wanted = {m.name: m.value for m in selector.matchers.matchers}
    assert all(m.op == promql_parser.MatchOp.Equal for m in selector.matchers.matchers), rule["expr"]
    matched = [(labels, value) for name, labels, value in samples if name == selector.name]
    return [labels for labels, value in matched
            if all(labels.get(k) == v for k, v in wanted.items()) and holds(value, node.rhs.val)]  # fmt: skip


def samples(registry: Any) -> list[Sample]:
    text = generate_latest(registry).decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


# --- the decision, for every combination of conditions ---------------------------------------------------


@pytest.mark.parametrize("flags", list(itertools.product((False, True), repeat=len(fields(Conditions)))))
def test_liveness_always_serves_and_readiness_follows_only_start_and_drain(flags: tuple[bool, ...]) -> None:
    conditions = Conditions(*flags)
    assert decide(conditions, LIVENESS) == SERVING  # the loop answered: that is all liveness means
    accepting = not (conditions.starting or conditions.draining)
    assert decide(conditions, READINESS) == (SERVING if accepting else NOT_SERVING)
    # The service keeps its meaning: any other condition (a bad token, the store down) says NOT_SERVING.
    others = [getattr(conditions, f.name) for f in fields(Conditions) if f.name not in PROCESS_LEVEL]
    assert decide(conditions, SERVICE) == (SERVING if accepting and not any(others) else NOT_SERVING)


# --- a token revoked while running -------------------------------------------------------------------


def test_a_revoked_token_keeps_the_probes_serving_and_the_service_says_why(make_sidecar, control):
    thread = make_sidecar()
    registry = install_metrics(thread.sidecar, process=False)
    thread.call(thread.sidecar.readiness.start(interval=0.1, recheck=0.1))
    with grpc.insecure_channel(thread.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)

        assert [status(s) for s in (*PROBES, SERVICE)] == [SERVING] * 3
        assert not firing("TrengoSidecarTokenRejected", samples(registry))
        control.configure(tokens=["rotated"])  # the token was revoked in Trengo
        wait_for(lambda: status(SERVICE) == NOT_SERVING, "the service to notice the revoked token")
        assert [status(s) for s in PROBES] == [SERVING, SERVING], "a revoked token reached a pod-level probe"
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)
        assert failure(caught.value).reason == "TRENGO_UNAUTHORIZED"  # calls still answer, with the reason

        found = samples(registry)
        assert ("trengo_sidecar_trengo_check", {"result": "unauthorized"}, 1.0) in found
        assert ("trengo_sidecar_not_serving", {"reason": "trengo_misconfigured"}, 1.0) in found
        assert firing("TrengoSidecarTokenRejected", found) == [{"result": "unauthorized"}]
        assert firing("TrengoSidecarNotServing", found) == [{"reason": "trengo_misconfigured"}]

        control.configure(tokens=[TOKEN])  # a new token in the Secret, or the old one restored
        wait_for(lambda: status(SERVICE) == SERVING, "the service to notice the token works again")
        assert not firing("TrengoSidecarTokenRejected", samples(registry))


# --- the real CLI: started with a refused token, and draining ---------------------------------------------


def test_a_sidecar_started_with_a_refused_token_passes_its_probes(spawn):
    """A rollout with a bad Secret goes on (the app starts) and the alert, not a crash loop, says why."""
    kubelet = f"127.0.0.1:{free_port()}"  # healthListen: where deploy/kubernetes' probes dial
    process = spawn(env={"TRENGO_API_TOKEN": WRONG}, serving=False, healthListen=kubelet)
    wait_for(lambda: health_status(kubelet, READINESS) == SERVING, "readiness once the first check answered")
    assert health_status(kubelet, LIVENESS) == SERVING
    wait_for(lambda: process.health(SERVICE) == NOT_SERVING, "the service to report the refused token")
    assert [health_status(kubelet, name) for name in (READINESS, LIVENESS)] == [SERVING, SERVING]
    assert "check apiToken" in process.output() and WRONG not in process.output()


def test_while_draining_readiness_fails_and_liveness_holds(spawn, control, ann):
    """SIGTERM: out of the Service at once, but never killed by a liveness failure while calls finish."""
    process = spawn(shutdownGraceSeconds=10)
    control.add_fault(method="POST", path="/api/v2/tickets", delay=3.0)  # a call in flight for 3 s
    with grpc.insecure_channel(process.address) as channel:
        track = pb.TrackRequest(
            event="Added to cart", context=struct({"traits": {"email": ann["identifier"]}})
        )
        call = threading.Thread(target=_quietly, args=(pb_grpc.TrengoSidecarStub(channel).Track, track))
        call.start()
        wait_for(lambda: any(r["status"] is None for r in control.requests("/api/v2/tickets")), "the call")
        process.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: process.health(READINESS) == NOT_SERVING, "readiness to fail on SIGTERM")
        assert process.health(LIVENESS) == SERVING, "liveness failed while the sidecar drained"
        assert process.popen.poll() is None
        call.join(15)
    assert process.popen.wait(15) == 0


def _quietly(method: Any, request: Any) -> None:
    with contextlib.suppress(grpc.RpcError):  # the answer is not what this test is about
        method(request, timeout=10)
