"""Over the whole run, the apiserver never failed to deliver an audit batch to the webhook."""

from __future__ import annotations

from conformance.harness.cluster import metric_sum
from conformance.harness.env import Environment


def test_no_webhook_error_in_the_whole_run(env: Environment) -> None:
    """apiserver_audit_error_total{plugin="webhook"} is 0 and its log shows no plugin error."""
    samples = env.cluster.metrics()
    assert metric_sum(samples, "apiserver_audit_error_total", plugin="webhook") == 0
    assert metric_sum(samples, "apiserver_audit_event_total") > 0
    log = (env.cluster.layout.logs / "kube-apiserver.log").read_text(errors="replace")
    assert "Error in audit plugin 'webhook'" not in log
