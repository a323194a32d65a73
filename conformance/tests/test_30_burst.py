"""A burst of a few thousand Metadata-level requests: every event the apiserver sends arrives.

An operator's service account reads a Secret a few thousand times over four connections:
audited at Metadata (the generated policy keeps service accounts outside kube-system for
what people's requests need, since any of them may be an access proxy), and never a
friction event (it acts for itself). The apiserver's own `apiserver_audit_event_total`
must grow by exactly as much as the agent's `healert_audit_events_total{source="webhook"}`
(and the tail agent's, across the log rotations the small `--audit-log-maxsize` forces),
with no webhook error on either side.
"""

from __future__ import annotations

import contextlib

import pytest

from conformance.harness.cluster import metric_sum
from conformance.harness.env import Environment
from conformance.harness.load import get_many
from conformance.harness.procs import wait_for
from conformance.harness.runner import Runner, audit_log_files, is_marker

pytestmark = pytest.mark.timeout(900)

REQUESTS = 3000
READ_PATH = "/api/v1/namespaces/payments/secrets/payments-db"
READER = "system:serviceaccount:payments:secret-reader"
READER_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:payments")


def _reader(env: Environment) -> str:
    """The reading service account's identity (a client certificate) and its one right."""
    cp = env.cluster
    cp.add_identity("secret-reader", READER, READER_GROUPS)
    meta = {"name": "burst-secret-reader", "namespace": "payments"}
    cp.apply(cp.BOOTSTRAP, [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [""], "resources": ["secrets"],
                    "resourceNames": ["payments-db"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "burst-secret-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "secret-reader",
                       "namespace": "payments"}]},
    ])
    return "secret-reader"


def _counts(env: Environment) -> dict[str, float]:
    serve, tail = env.agents.serve, env.agents.tail
    assert serve is not None and tail is not None
    apiserver = env.cluster.metrics()
    serve_m, tail_m = serve.metrics(), tail.metrics()
    return {
        "apiserver": metric_sum(apiserver, "apiserver_audit_event_total"),
        "apiserver_errors": metric_sum(apiserver, "apiserver_audit_error_total",
                                       plugin="webhook"),
        "webhook": metric_sum(serve_m, "healert_audit_events_total", source="webhook"),
        "tail": metric_sum(tail_m, "healert_audit_events_total", source="tail"),
        "webhook_non_200": sum(v for k, v in serve_m.items()
                               if k.startswith("healert_webhook_requests_total{")
                               and 'code="200"' not in k),
        "rotations": metric_sum(tail_m, "healert_tail_rotations_total"),
    }


def test_burst_every_event_accounted_for(env: Environment, runner: Runner) -> None:
    """The agents count exactly the events the apiserver says it audited."""
    reader = _reader(env)
    runner.sync()
    before = _counts(env)
    queued = {r["key"] for r in runner.serve.outbox() if not is_marker(r)}
    files_before = len(audit_log_files(env.cluster.layout.audit_log))
    load = get_many(env.cluster, reader, READ_PATH, REQUESTS, threads=4)
    assert load.codes == {200: REQUESTS}, (load.codes, load.errors[:3])
    runner.sync(timeout=300)
    # The marker's batch can overtake an earlier one still in flight: let the counts settle.
    seen: dict[str, dict[str, float]] = {}

    def settled() -> bool:
        seen["after"] = now = _counts(env)
        sent = now["apiserver"] - before["apiserver"]
        return now["webhook"] - before["webhook"] >= sent and now["tail"] - before["tail"] >= sent

    with contextlib.suppress(TimeoutError):
        wait_for(settled, 60, "the agents' counts to reach the apiserver's", interval=0.5)
    after = seen["after"]
    sent = after["apiserver"] - before["apiserver"]
    print(f"burst: {REQUESTS} requests in {load.seconds:.1f} s; apiserver audited {sent:.0f}, "
          f"webhook agent received {after['webhook'] - before['webhook']:.0f}, tail agent "
          f"read {after['tail'] - before['tail']:.0f}; "
          f"{len(audit_log_files(env.cluster.layout.audit_log)) - files_before} new log files")
    assert sent >= REQUESTS
    assert after["webhook"] - before["webhook"] == sent
    assert after["tail"] - before["tail"] == sent
    assert after["apiserver_errors"] == before["apiserver_errors"] == 0
    assert after["webhook_non_200"] == 0
    assert after["rotations"] > before["rotations"], "the audit log never rotated"
    # The service account acts for itself: no friction event (the marker's aside).
    assert {r["key"] for r in runner.serve.outbox() if not is_marker(r)} == queued
