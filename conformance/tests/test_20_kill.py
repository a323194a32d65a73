"""SIGKILL the agents in the middle of a run: the apiserver's own retries bring every batch in.

alice reads a Secret a few hundred times (one friction event each). Part way through, the
`serve` agent is killed with SIGKILL and started again on the same port and state
directory a few seconds later; the batches the apiserver could not deliver meanwhile are
resent by the apiserver itself (its webhook backend retries with backoff). Later the `tail`
agent is killed and restarted too (it resumes from its checkpoint). Then both outboxes must
hold exactly one friction event per request, the same ones, and the apiserver must report
no webhook error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conformance.harness.cluster import metric_sum
from conformance.harness.env import Environment
from conformance.harness.load import get_many
from conformance.harness.procs import wait_for
from conformance.harness.runner import Runner, is_marker, outbox_by_key

pytestmark = pytest.mark.timeout(900)

REQUESTS = 400
KILL_SERVE_AT, RESTART_SERVE_AT, KILL_TAIL_AT = 100, 180, 280
READ_PATH = "/api/v1/namespaces/payments/secrets/payments-db"


def test_sigkill_loses_nothing_and_stores_nothing_twice(env: Environment,
                                                        runner: Runner) -> None:
    runner.sync()
    before_serve, before_tail = set(runner.seen_serve), set(runner.seen_tail)
    errors_before = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                               plugin="webhook")
    side_threads: list[threading.Thread] = []
    killed_at: list[float] = []
    restarted_at: list[float] = []

    def in_background(action: Callable[[], object]) -> None:
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        side_threads.append(thread)

    def restart_serve() -> None:
        env.agents.restart_serve()
        restarted_at.append(time.time())

    def progress(n: int) -> None:
        if n == KILL_SERVE_AT:
            assert env.agents.serve is not None
            env.agents.serve.kill()
            killed_at.append(time.time())
        elif n == RESTART_SERVE_AT:
            in_background(restart_serve)
        elif n == KILL_TAIL_AT:
            assert env.agents.tail is not None
            env.agents.tail.kill()
            in_background(env.agents.restart_tail)

    load = get_many(env.cluster, "alice", READ_PATH, REQUESTS, pause=0.02, on_progress=progress)
    for thread in side_threads:
        thread.join(timeout=120)
    assert load.codes == {200: REQUESTS}, (load.codes, load.errors[:3])

    def new_rows() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        serve, tail = outbox_by_key(runner.serve), outbox_by_key(runner.tail)
        runner.seen_serve, runner.seen_tail = set(serve), set(tail)
        return ({k: v for k, v in serve.items() if k not in before_serve and not is_marker(v)},
                {k: v for k, v in tail.items() if k not in before_tail and not is_marker(v)})

    def reads(rows: dict[str, dict[str, Any]]) -> list[str]:
        return [str(r["event"]["timestamp"]) for r in rows.values()
                if r["rule"] == "emergency-access" and r["event"].get("actor") == "alice"]

    # Batches that failed while the agent was down come back on the apiserver's backoff
    # (10 s, then x1.5), possibly after later batches: wait for all, then a little longer
    # for anything that would arrive twice.
    runner.sync(timeout=300)
    found: dict[str, tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = {}

    def complete() -> bool:
        found["rows"] = new_rows()
        return all(len(reads(rows)) >= REQUESTS for rows in found["rows"])

    with contextlib.suppress(TimeoutError):
        wait_for(complete, 240, "every friction event on both paths", interval=1.0)
    time.sleep(3)
    new_serve, new_tail = new_rows()
    serve_reads, tail_reads = reads(new_serve), reads(new_tail)
    # One friction event per request (each has its own requestReceivedTimestamp), none twice.
    assert len(serve_reads) == REQUESTS, f"webhook path: {len(serve_reads)} of {REQUESTS}"
    assert len(set(serve_reads)) == REQUESTS
    assert len(tail_reads) == REQUESTS, f"tail path: {len(tail_reads)} of {REQUESTS}"
    assert set(new_serve) == set(new_tail)
    # Requests made while the agent was down reached it later: the apiserver resent them.
    down = [t for t in serve_reads if _iso(killed_at[0]) <= t < _iso(restarted_at[0])]
    print(f"kill: {len(down)} requests were made while the webhook agent was down "
          f"({restarted_at[0] - killed_at[0]:.1f} s); all {REQUESTS} arrived once on both paths")
    assert down, "no request was made while the webhook agent was down"
    errors_after = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                              plugin="webhook")
    assert errors_before == errors_after == 0


def _iso(epoch: float) -> str:
    """The apiserver's timestamp format, for string comparison with event timestamps."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
