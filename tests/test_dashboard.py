"""The Grafana dashboard and the alert rules query only metrics the agent really exports.

The metric names come from two places: the families healert_webhook.metrics declares
(a labelled counter has no sample until something increments it, so the registry is the
complete list), and a real agent's /metrics, started here as `python -m healert_webhook
serve` on loopback and sent one EventList, which checks that the registry and the
running agent agree. Every metric name in every dashboard query and alert expression
must be one of them; `up` (Prometheus) and the kube-apiserver's own
apiserver_audit_error_total are the only outside names, and only the alerts use the
latter.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from healert_webhook import metrics

from support.paths import ROOT

CHART = ROOT / "charts" / "healert-webhook"
DASHBOARD = CHART / "dashboards" / "healert-webhook.json"
ALERTS = CHART / "files" / "prometheus-rules.yaml"
EXAMPLE_BATCH = ROOT / "docs" / "examples" / "exec-eventlist.json"
# Names that are not the agent's, each with where it comes from.
PROMETHEUS = {"up"}  # Prometheus's own per-target health series
APISERVER = {"apiserver_audit_error_total"}  # kube-apiserver: audit events it failed to send
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "inf", "nan"}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- the metric names


def declared_samples() -> dict[str, bool]:
    """Every sample name the registry can export -> whether its family has labels."""
    names: dict[str, bool] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labelled = bool(obj._labelnames)
        for family in obj.describe():
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labelled
    return names


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The agent's output lines as they come (None at the end), read by a thread: a
    select() on the pipe cannot see lines already in the reader's buffer."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str | None], pattern: str, deadline: float
                ) -> re.Match[str]:
    """Read the agent's output until a line matches `pattern`."""
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r}; agent said:\n{''.join(seen)}")


def agent_samples(work: Any, *, batch: bool) -> set[str]:
    """Sample names of a real agent's /metrics (`serve --tail` on an empty log), after it
    took one EventList when `batch`, else as it starts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HEALERT_") and k not in {"RULES_PATH", "AUDIT_LOG_PATH"}}
    env["PYTHONPATH"] = str(ROOT)
    (work / "audit.log").write_bytes(b"")
    proc = subprocess.Popen(
        [sys.executable, "-m", "healert_webhook", "serve", "--listen", "127.0.0.1:0",
         "--ops-listen", "127.0.0.1:0", "--state-dir", str(work / "state"),
         "--tail", str(work / "audit.log")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        lines = _lines(proc)
        ops = _read_until(lines, r"ops listener on (http://127\.0\.0\.1:\d+)", deadline)[1]
        webhook = _read_until(lines, r"webhook listener on (http://127\.0\.0\.1:\d+\S*)",
                              deadline)[1]
        if batch:
            request = urllib.request.Request(
                webhook, data=EXAMPLE_BATCH.read_bytes(), method="POST",
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
        with urllib.request.urlopen(f"{ops}/metrics", timeout=30) as answer:
            text = answer.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


@pytest.fixture(scope="module")
def live_samples(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of a real agent's /metrics after it took one EventList."""
    return agent_samples(tmp_path_factory.mktemp("agent"), batch=True)


@pytest.fixture(scope="module")
def fresh_samples(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of a real agent's /metrics as it starts, before any event."""
    return agent_samples(tmp_path_factory.mktemp("fresh"), batch=False)


def test_the_registry_and_the_running_agent_agree(live_samples: set[str]) -> None:
    declared = declared_samples()
    live = {name for name in live_samples if name.startswith("healert_")}
    assert live <= set(declared), f"exported but not declared: {live - set(declared)}"
    unlabelled = {name for name, labelled in declared.items()
                  if not labelled and not name.endswith("_created")}
    assert unlabelled <= live, f"declared but not exported: {unlabelled - live}"
    # The batch made the labelled counters of the ingest path appear too.
    for name in ("healert_audit_events_total", "healert_friction_events_total",
                 "healert_webhook_requests_total"):
        assert name in live, name


@pytest.fixture(scope="module")
def known(live_samples: set[str]) -> set[str]:
    return set(declared_samples()) | {n for n in live_samples if n.startswith("healert_")}


# --------------------------------------------------------------------------- PromQL


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    text = re.sub(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", r"\1", expr, flags=re.S)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ...)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for found in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, call = found[1], found[2]
        if not call and word not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_metric_names_reads_promql_as_intended() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{pod=~"$pod"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names(
        "(sum by (namespace, pod) (increase(b_total[30m])) == 0) or "
        '(sum by (namespace, pod) (up{job="x"} == 1) unless sum by (pod) (c_total))'
    ) == {"b_total", "up", "c_total"}
    assert metric_names("d > 1e3 and delta(e[5m] offset 1h) > 0") == {"d", "e"}
    assert metric_names('label_values(f_info{namespace=~"$namespace"}, pod)') == {"f_info"}
    assert metric_names("absent(up{job=\"healert-webhook\"})") == {"up"}


def unknown_names(expr: str, known: set[str], outside: set[str]) -> set[str]:
    names = metric_names(expr)
    assert names, f"no metric found in {expr!r}"
    return {n for n in names if n not in known and n not in outside}


def test_an_unknown_metric_is_caught(known: set[str]) -> None:
    expr = "sum(rate(healert_webhook_request_total[5m]))"  # "requests", misspelt
    assert unknown_names(expr, known, PROMETHEUS) == {"healert_webhook_request_total"}
    expr = "healert_outbox_depth_total > 1"  # a gauge has no _total
    assert unknown_names(expr, known, PROMETHEUS) == {"healert_outbox_depth_total"}


# --------------------------------------------------------------------------- the dashboard


def dashboard() -> Doc:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(board: Doc) -> Iterator[Doc]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board: Doc) -> list[str]:
    queries = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_queries_only_real_metrics(known: set[str]) -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) > 30
    for query in queries:
        assert not unknown_names(query, known, PROMETHEUS), query


def test_dashboard_covers_what_operators_watch() -> None:
    used = set().union(*map(metric_names, dashboard_queries(dashboard())))
    wanted = {
        "healert_audit_events_total",  # audit events received, by source
        "healert_friction_events_total",  # friction events, by rule and severity
        "healert_outbox_depth", "healert_outbox_oldest_age_seconds",
        "healert_forward_attempts_total",  # deliveries and their outcomes
        "healert_forward_duration_seconds_bucket",
        "healert_forward_paused",  # forwarder state
        "healert_webhook_request_duration_seconds_bucket",  # webhook latency
        "healert_webhook_requests_total",  # status codes
        "healert_webhook_auth_failures_total",  # handshake and auth refusals
        "healert_dead_letters", "healert_outbox_full",
        "healert_tail_lag_bytes", "up",
    }
    assert wanted <= used, wanted - used
    queries = "\n".join(dashboard_queries(dashboard()))
    for grouping in ("by (source)", "by (rule, severity)", "by (outcome)", "by (code)",
                     "by (reason)"):
        assert grouping in queries, grouping


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["uid"] == "healert-webhook" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "pod"} <= set(variables)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    taken: set[tuple[int, int]] = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and panel.get("description"), panel["title"]
            for target in panel["targets"]:
                assert 'namespace=~"$namespace"' in target["expr"], target["expr"]


def test_no_dashboard_query_names_a_job() -> None:
    """The scrape job is the pods' app.kubernetes.io/name label, which the chart's
    nameOverride changes: both copies of the dashboard ask the `job` variable (the jobs
    whose agents export healert_build_info), never a job by name."""
    shipped = yaml.safe_load((ROOT / "manifests" / "monitoring" / "grafana-dashboard.yaml")
                             .read_text(encoding="utf-8"))
    for board in (dashboard(), json.loads(shipped["data"]["healert-webhook.json"])):
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["job"]["definition"].startswith("label_values(healert_build_info")
        assert variables["job"]["definition"].endswith(", job)")
        queries = dashboard_queries(board)
        assert any("up{" in q for q in queries)
        for query in queries:
            assert not re.search(r'job\s*=~?\s*"(?!\$job")', query), query
            if "up{" in query:
                assert 'job=~"$job"' in query, query


# --------------------------------------------------------------------------- the alerts


def alert_rules() -> list[Doc]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alerts_query_only_real_metrics(known: set[str]) -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    outside = set()
    for rule in rules:
        names = metric_names(rule["expr"])
        assert not unknown_names(rule["expr"], known, PROMETHEUS | APISERVER), rule["alert"]
        outside |= names & APISERVER
    assert outside == APISERVER, "the apiserver's counter is used, or drop it from the list"


def test_alerts_cover_silence_and_delivery() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for name in ("HealertTargetDown", "HealertTargetAbsent", "HealertNoAuditEvents",
                 "HealertWebhookAuthFailures", "HealertApiserverAuditWebhookErrors",
                 "HealertWebhookErrors", "HealertOutboxGrowing", "HealertForwardPaused",
                 "HealertOutboxFull", "HealertDeadLetters", "HealertRulesReloadFailed"):
        assert name in rules, name
    for name, metric in (("HealertForwardErrors", "healert_forward_errors_total"),
                         ("HealertApiKeyInvalid", "healert_api_key_invalid"),
                         ("HealertForwardAwaitingRead", "healert_forward_awaiting_read")):
        assert metric_names(rules[name]["expr"]) == {metric}, name
    assert rules["HealertTargetAbsent"]["expr"].startswith("absent(up{")
    # Silence must be seen even when the counter never got a sample (nothing arrived
    # since the agent started): the expression also asks `up` for live targets.
    silence = metric_names(rules["HealertNoAuditEvents"]["expr"])
    assert silence == {"healert_audit_events_total", "up"}
    assert "unless" in rules["HealertNoAuditEvents"]["expr"]
    assert "healert_webhook_auth_failures_total" in rules["HealertWebhookAuthFailures"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "up{" in rule["expr"]:
            assert 'job="healert-webhook"' in rule["expr"], rule["alert"]


def test_alert_expressions_are_balanced() -> None:
    for rule in alert_rules():
        expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', rule["expr"])
        for opening, closing in ("()", "{}", "[]"):
            depth = 0
            for char in expr:
                depth += (char == opening) - (char == closing)
                assert depth >= 0, rule["alert"]
            assert depth == 0, rule["alert"]


def test_operations_guide_lists_every_alert() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in guide, rule["alert"]


def test_alert_file_is_what_the_chart_and_manifests_ship() -> None:
    shipped = yaml.safe_load((ROOT / "manifests" / "monitoring" / "prometheusrule.yaml")
                             .read_text(encoding="utf-8"))
    assert shipped["spec"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    configmap = yaml.safe_load((ROOT / "manifests" / "monitoring" / "grafana-dashboard.yaml")
                               .read_text(encoding="utf-8"))
    assert json.loads(configmap["data"]["healert-webhook.json"]) == dashboard()
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


# Series only the cluster view writes: a fresh agent without a cluster has none of them.
VIEW_ONLY = re.compile(r"^healert_cluster_view_")


def test_a_fresh_agent_exports_every_series_a_panel_or_an_alert_reads(
        fresh_samples: set[str]) -> None:
    """Before its first event, an agent exports every series the dashboard and the alerts
    read (at 0): no panel says "No data", and an increase() alert sees the first event."""
    read = set().union(*map(metric_names, dashboard_queries(dashboard())),
                       *(metric_names(rule["expr"]) for rule in alert_rules()))
    wanted = {name for name in read - PROMETHEUS - APISERVER if not VIEW_ONLY.match(name)}
    assert len(wanted) > 20
    assert wanted <= fresh_samples, f"missing from a fresh agent: {sorted(wanted - fresh_samples)}"
