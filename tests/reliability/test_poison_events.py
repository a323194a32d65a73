"""Events that once made evaluation raise, and timestamps that are no times, sent to the
real agent: the webhook answers 200 and keeps every other event of the batch, the tailer
reads past them, and each is counted.

The poison: an owner reference whose `kind` is a list (a person's merge patch is logged as
sent, before validation), fields nested 1000 arrays deep (the dedup key once recursed into
them), and exec events whose request time is `2026-13-45T99:99:99Z`, `24:00:00` or written
in full-width digits (they once passed the timestamp check, and the backend then refused
the whole friction event).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from healert_webhook.outbox import Outbox

from support.agent import JSON, Agent, metric, serve_args
from support.events import event_list, exec_event, gitops_deployment, go_ordered, workload_patch
from support.servers import wait_for

FULL_WIDTH_2026 = "\uff12\uff10\uff12\uff16"  # the year in full-width digits
BAD_TIMES = ("2026-13-45T99:99:99Z", "2026-11-26T24:00:00Z", f"{FULL_WIDTH_2026}-11-26T10:00:00Z")


# orjson writes at most 255 levels, so the deep value is spliced into the bytes.
DEEP_MARK = "__1000_arrays_deep__"
DEEP = b"[" * 1000 + b'"x"' + b"]" * 1000


def deepened(raw: bytes) -> bytes:
    """The JSON with each mark replaced by a value nested 1000 arrays deep."""
    return raw.replace(orjson.dumps(DEEP_MARK), DEEP)


def poison() -> list[dict[str, Any]]:
    """One of each poison, none of them an exec."""
    obj = gitops_deployment("payments-api", "payments", "argocd")
    obj["metadata"]["ownerReferences"] = [{"kind": ["Deployment"], "name": {"x": 1}}]
    owner = workload_patch(obj, user="oidc:jane@example.com")
    owner["requestObject"] = {"metadata": {"ownerReferences": [{"kind": ["x"]}]}}
    nested = go_ordered({**exec_event(900, tag="deep", sub="log"), "auditID": DEEP_MARK,
                         "requestObject": {"a": DEEP_MARK}})
    return [owner, nested]


def bad_times(tag: str) -> list[dict[str, Any]]:
    """Exec events by people whose request time is no time; the stage time is good."""
    events = []
    for n, stamp in enumerate(BAD_TIMES):
        event = exec_event(n, tag=tag)
        event["requestReceivedTimestamp"] = stamp
        events.append(event)
    return events


def good(tag: str, count: int) -> list[dict[str, Any]]:
    return [exec_event(100 + n, tag=tag) for n in range(count)]


def queued_execs(state: Path) -> set[str]:
    """The keys of the kubectl-exec friction events in the outbox."""
    box = Outbox(state / "outbox.db")
    try:
        return {row.key for row in box.head(1_000_000) if row.rule == "kubectl-exec"}
    finally:
        box.close()


def test_the_webhook_answers_200_and_keeps_the_rest_of_the_batch(tmp_path: Path) -> None:
    agent = Agent(serve_args(), tmp_path)
    try:
        port, ops = agent.ports()
        url = f"http://127.0.0.1:{port}/audit"
        before = metric(ops, "healert_friction_events_total", rule="kubectl-exec")
        batch = [*good("before", 3), *poison(), *bad_times("time"), *good("after", 3)]
        answer = httpx.post(url, content=deepened(event_list(batch)), headers=JSON, timeout=30)
        assert answer.status_code == 200, answer.text
        # the six good execs and the three with a bad request time
        assert metric(ops, "healert_friction_events_total", rule="kubectl-exec") == before + 9
        assert metric(ops, "healert_event_fixups_total", source="webhook") == 3
        assert metric(ops, "healert_invalid_events_total", source="webhook",
                      reason="evaluation_error") == 0
        assert "Traceback" not in agent.output()
        assert agent.alive()
        assert len(queued_execs(tmp_path / "state")) == 9
    finally:
        agent.stop()


def test_the_tailer_reads_past_them_and_its_checkpoint_moves_on(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    lines = [*good("t-before", 3), *poison(), *bad_times("t-time"), *good("t-after", 3)]
    log.write_bytes(deepened(b"".join(
        orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", **event}) + b"\n"
        for event in lines)))
    agent = Agent(["tail", "--audit-log", str(log), "--from", "start", "--state-dir", "state",
                   "--ops-listen", "127.0.0.1:0"], tmp_path)
    try:
        ops = int(agent.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
        wait_for(lambda: metric(ops, "healert_audit_events_total", source="tail") == len(lines),
                 timeout=30, what="every line read")
        wait_for(lambda: metric(ops, "healert_tail_lag_bytes") == 0, timeout=30,
                 what="the checkpoint at the end of the file")
        assert metric(ops, "healert_friction_events_total", rule="kubectl-exec") == 9
        assert metric(ops, "healert_event_fixups_total", source="tail") == 3
        # more lines after the poison are read and detected too
        with log.open("ab") as out:
            out.write(orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                                    **exec_event(500, tag="t-later")}) + b"\n")
        wait_for(lambda: metric(ops, "healert_friction_events_total", rule="kubectl-exec") == 10,
                 timeout=30, what="a line written after the poison")
        assert "Traceback" not in agent.output()
    finally:
        agent.stop()
    assert len(queued_execs(tmp_path / "state")) == 10  # all of them kept for delivery
