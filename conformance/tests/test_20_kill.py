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
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
Rows = dict[str, dict[str, Any]]


@dataclass
class Kills:
    """When the webhook agent went down and came back; threads still restarting agents."""

    killed: list[float] = field(default_factory=list)
    restarted: list[float] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def in_background(self, action: Any) -> None:
        """Run `action` in a thread, so the requests go on meanwhile."""
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        self.threads.append(thread)


def _load_with_kills(env: Environment) -> Kills:
    kills = Kills()

    def restart_serve() -> None:
        env.agents.restart_serve()
        kills.restarted.append(time.time())

    def progress(n: int) -> None:
        if n == KILL_SERVE_AT:
            assert env.agents.serve is not None
            env.agents.serve.kill()
            kills.killed.append(time.time())
        elif n == RESTART_SERVE_AT:
            kills.in_background(restart_serve)
        elif n == KILL_TAIL_AT:
            assert env.agents.tail is not None
            env.agents.tail.kill()
            kills.in_background(env.agents.restart_tail)

    load = get_many(env.cluster, "alice", READ_PATH, REQUESTS, pause=0.02, on_progress=progress)
    for thread in kills.threads:
        thread.join(timeout=120)
    assert load.codes == {200: REQUESTS}, (load.codes, load.errors[:3])
    return kills


def _reads(rows: Rows) -> list[str]:
    """Timestamps of alice's Secret reads among the friction events."""
    return [str(r["event"]["timestamp"]) for r in rows.values()
            if r["rule"] == "emergency-access" and r["event"].get("actor") == "alice"]


def _collect(runner: Runner, before_serve: set[str], before_tail: set[str]) -> tuple[Rows, Rows]:
    """Wait until both outboxes hold every request, then a little longer for late resends.

    Batches that failed while the agent was down come back on the apiserver's backoff
    (10 s, then x1.5), possibly after later batches, so a marker alone does not prove all
    arrived.
    """
    def new_rows() -> tuple[Rows, Rows]:
        serve, tail = outbox_by_key(runner.serve), outbox_by_key(runner.tail)
        runner.seen_serve, runner.seen_tail = set(serve), set(tail)
        return ({k: v for k, v in serve.items() if k not in before_serve and not is_marker(v)},
                {k: v for k, v in tail.items() if k not in before_tail and not is_marker(v)})

    runner.sync(timeout=300)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: all(len(_reads(rows)) >= REQUESTS for rows in new_rows()), 240,
                 "every friction event on both paths", interval=1.0)
    time.sleep(3)
    return new_rows()


def _iso(epoch: float) -> str:
    """The apiserver's timestamp format, for string comparison with event timestamps."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_sigkill_loses_nothing_and_stores_nothing_twice(env: Environment,
                                                        runner: Runner) -> None:
    """Kill serve mid-run and restart it; kill tail too: every request once on both paths."""
    runner.sync()
    before_serve, before_tail = set(runner.seen_serve), set(runner.seen_tail)
    errors_before = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                               plugin="webhook")
    kills = _load_with_kills(env)
    new_serve, new_tail = _collect(runner, before_serve, before_tail)
    serve_reads, tail_reads = _reads(new_serve), _reads(new_tail)
    # One friction event per request (each has its own requestReceivedTimestamp), none twice.
    assert len(serve_reads) == REQUESTS, f"webhook path: {len(serve_reads)} of {REQUESTS}"
    assert len(set(serve_reads)) == REQUESTS
    assert len(tail_reads) == REQUESTS, f"tail path: {len(tail_reads)} of {REQUESTS}"
    assert set(new_serve) == set(new_tail)
    # Requests made while the agent was down reached it later: the apiserver resent them.
    down = [t for t in serve_reads if _iso(kills.killed[0]) <= t < _iso(kills.restarted[0])]
    resent = metric_sum(runner.serve.metrics(), "healert_duplicates_suppressed_total",
                        source="webhook")
    print(f"kill: {len(down)} requests were made while the webhook agent was down "
          f"({kills.restarted[0] - kills.killed[0]:.1f} s); all {REQUESTS} arrived once on "
          f"both paths; the restarted agent suppressed {resent:.0f} it already had")
    assert down, "no request was made while the webhook agent was down"
    errors_after = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                              plugin="webhook")
    assert errors_before == errors_after == 0
