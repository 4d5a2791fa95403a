"""The Grafana dashboard and the Prometheus alerts, checked against a live sidecar's /metrics.

Every PromQL expression (dashboard panels and variables, alert rules) is parsed with promql-parser.
Then a real sidecar process (PostgreSQL store, the queue on, the simulator as Trengo) goes through
a short scenario: a delivery, an event from an SDK over HTTP, an error, a 429, a queued event that
waits, a store outage. Every metric an expression selects must appear in the scrapes taken along the
way, with every label it matches or groups by, and every value it matches exactly. A renamed metric
or label fails here.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.fleet import NOT_SERVING, SERVICE, Fleet, wait_for
from tests.support.harness import free_port
from tests.support.ingest_helpers import WRITE_KEY
from tests.support.postgres import Postgres
from tests.support.queue_helpers import FAST_QUEUE, order

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "trengo-sidecar.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
OPERATOR_RULES = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
RUNBOOKS = ROOT / "docs" / "alerts.md"
# Labels the scrape adds (kubernetes_sd relabelling or a PodMonitor), never the sidecar: allowed
# in expressions without appearing in /metrics. `le` is a histogram's, exported on its buckets.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container"}
# Grafana's variables, as a query would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
Series = dict[str, dict[str, set[str]]]  # metric name -> label -> values seen


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard and every alert."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, label) is Grafana's, not PromQL: its selector is.
            found = re.fullmatch(r"label_values\((.*), *(\w+)\)", variable["definition"])
            assert found, f"variable {variable['name']}: {variable['definition']}"
            yield f"variable {variable['name']}", found.group(1)
    for rule in rules():
        yield f"alert {rule['alert']}", rule["expr"]


def parse(expr: str) -> promql_parser.Expr:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql_parser.parse(expr)


def selectors(node: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []
    promql_parser.walk(
        node, lambda n: found.append(n) if isinstance(n, promql_parser.VectorSelector) else None
    )
    return found


def grouping(node: promql_parser.Expr) -> list[tuple[list[str], list[promql_parser.VectorSelector]]]:
    """For every aggregation with by (...): its labels, and the selectors it aggregates."""
    found = []

    def visit(n: promql_parser.Expr) -> None:
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            found.append((list(n.modifier.labels), selectors(n.expr)))

    promql_parser.walk(node, visit)
    return found


ALL = [pytest.param(expr, id=where) for where, expr in expressions()]


@pytest.mark.parametrize("expr", ALL)
def test_every_expression_parses_as_promql(expr: str) -> None:
    node = parse(expr)
    assert selectors(node), f"selects no metric: {expr}"
    assert all(s.name and s.name.startswith("trengo_sidecar_") for s in selectors(node)), expr


def test_the_rules_file_and_the_prometheusrule_hold_the_same_groups() -> None:
    operator = yaml.safe_load(OPERATOR_RULES.read_text())
    assert operator["kind"] == "PrometheusRule" and operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], (
        "prometheusrule.yaml differs from alerts.yaml: edit alerts.yaml and copy its groups"
    )


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_the_docs() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.M)}  # fmt: skip
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/alerts.md#{rule['alert'].lower()}", url
        assert rule["alert"].lower() in anchors, f"docs/alerts.md has no runbook for {rule['alert']}"
    wanted = {"TokenRejected", "StoreDown", "QueueBacklog", "DeliveriesFailing", "RateLimited", "NotServing"}
    assert wanted <= {n.removeprefix("TrengoSidecar") for n in names}


def test_the_dashboard_takes_its_datasource_from_a_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


# --- against a live sidecar ---------------------------------------------------------------------------


def scrape(url: str, into: Series) -> str:
    text = httpx.get(url, timeout=5, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = into.setdefault(sample.name, defaultdict(set))
            for key, value in sample.labels.items():
                labels[key].add(value)
    return text


def missing(expr: str, seen: Series) -> list[str]:
    """What ``expr`` asks for that the scrapes never showed."""
    node = parse(expr)
    problems = []
    for selector in selectors(node):
        labels = seen.get(selector.name)
        if labels is None:
            problems.append(f"no metric {selector.name}")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name in TARGET_LABELS:
                continue
            values = labels.get(matcher.name)
            if values is None:
                problems.append(f"{selector.name} has no label {matcher.name}")
            elif matcher.op == promql_parser.MatchOp.Equal and matcher.value not in values:
                problems.append(
                    f"{selector.name}{{{matcher.name}}} never was {matcher.value!r}: {sorted(values)}"
                )
            elif matcher.op == promql_parser.MatchOp.Re and not any(
                re.fullmatch(matcher.value, v) for v in values
            ):
                problems.append(
                    f"{selector.name}{{{matcher.name}}} never matched {matcher.value!r}: {sorted(values)}"
                )
    for labels, inside in grouping(node):
        for label in set(labels) - TARGET_LABELS:
            if not any(label in seen.get(s.name, {}) for s in inside):
                problems.append(f"by ({label}): no label {label} on {[s.name for s in inside]}")
    return problems


def settle(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait until ``condition`` holds or ``seconds`` pass, whichever comes first."""
    ends = time.monotonic() + seconds
    while not condition() and time.monotonic() < ends:
        time.sleep(0.1)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own: the scenario stops it, and others must not see that."""
    server = Postgres()
    server.start()
    yield server
    server.close()


def test_every_metric_and_label_the_dashboard_and_alerts_use_is_exported(
    sim: SimulatorThread,
    control: SimulatorControl,
    ann: dict[str, Any],
    tmp_path: Path,
    own_postgres: Postgres,
) -> None:
    metrics_port, http_port = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    fleet = Fleet(tmp_path, sim.base_url)
    seen: Series = {}
    try:
        (sidecar,) = fleet.spawn(
            store=own_postgres.create_database("dashboards"), metricsListen=f"127.0.0.1:{metrics_port}",
            httpListen=f"127.0.0.1:{http_port}", writeKeys=[WRITE_KEY], maxAttempts=2,
            **FAST_QUEUE)  # fmt: skip
        stub = sidecar.stub
        stub.Enqueue(order("ann", 1), timeout=10)  # a delivery, through the queue
        wait_for(lambda: len(control.requests("/api/v2/tickets", "POST")) == 1, "the queued ticket")
        stub.Track(order("ann", 2).track, timeout=10)  # a delivery, through the RPC
        sdk_event = {"type": "track", "userId": "ann", "messageId": "sdk-1", "event": "Order",
                     "properties": {"n": 6}, "context": {"traits": {"email": "ann@example.com"}}}  # fmt: skip
        answer = httpx.post(f"http://127.0.0.1:{http_port}/v1/track", json=sdk_event, auth=(WRITE_KEY, ""),
                            timeout=10, trust_env=False)  # fmt: skip
        assert answer.status_code == 200, answer.text  # an event from a RudderStack SDK, queued
        control.add_fault(method="POST", path="/api/v2/tickets", status=429, headers={"Retry-After": "0"})
        control.add_fault(method="POST", path="/api/v2/tickets", status=503, count=-1)
        with pytest.raises(grpc.RpcError):
            stub.Track(order("ann", 3).track, timeout=10)  # an error: Trengo answers 429, then 503s
        stub.Enqueue(order("ann", 4), timeout=10)  # a queued event, waiting while Trengo fails
        # Waits on the scrape's text only as long as it takes: a renamed metric must fail below, by name.
        settle(lambda: 'trengo_sidecar_queue_depth{state="retrying"} 1.0' in scrape(url, seen))
        own_postgres.stop()  # a store outage
        with pytest.raises(grpc.RpcError):
            stub.Track(order("bob", 5).track, timeout=10)
        wait_for(lambda: sidecar.health(SERVICE) == NOT_SERVING, "the service to see the store down", 30)
        settle(lambda: "trengo_sidecar_store_up 0.0" in scrape(url, seen))
        scrape(url, seen)
    finally:
        fleet.close()
    problems = {where: found for where, expr in expressions() if (found := missing(expr, seen))}
    assert not problems, json.dumps(problems, indent=1)
