"""A clock step cannot stall deliveries of the real `serve` process.

Must hold (issue 22 item 5): no wait derived from a stored wall-clock time exceeds its
nominal length however the clock moves; a stored time in the future counts as now.
A clock that was an hour ahead when a send was marked in flight (and when the pacer
stored its last send), then corrected, leaves both an hour in the future: the agent
started afterwards must still settle those rows within a few forward timeouts.
Before: reconciliation waited for the in-flight mark plus the forward timeout, an hour
here, with the whole queue behind it and `/readyz` 200.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from healert_webhook.backend_contract import prepare
from healert_webhook.forward import LAST_SEND
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.agent import Agent, forwarding_env, metric, serve_args
from support.backend import run_backend
from support.servers import wait_for

KEY = "clock-step-key-31"
TIMEOUT = 1.0  # HEALERT_FORWARD_TIMEOUT of the agent
STEP = 3600.0  # how far ahead the clock was


def friction(n: int) -> Friction:
    when = datetime.now(UTC) - timedelta(hours=1, microseconds=-n)
    return Friction(f"{n:032x}", "exec-into-pod", {
        "entity_ref": "component:payments/payments-api", "type": "exec-into-pod",
        "severity": "high", "actor": "alice", "description": f"clock event {n}",
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def test_in_flight_marks_an_hour_ahead_are_settled_within_a_few_timeouts(
        tmp_path: Path, agents: list[Agent]) -> None:
    db = tmp_path / "state" / "outbox.db"
    rows = [friction(n) for n in range(3)]
    box = Outbox(db)
    box.store(rows)
    box.close()
    ahead = time.time() + STEP
    with sqlite3.connect(db) as conn:  # what a clock an hour ahead left behind
        conn.execute("UPDATE queue SET in_flight = ?, attempts = 1 WHERE key != ?",
                     (ahead, rows[2].key))
        conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                     (LAST_SEND, int(ahead * 1e6)))
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        # the first send reached the backend (its answer was lost); the second did not
        body, _ = prepare(rows[0].event)
        httpx.post(backend.url + "/events", json=body, timeout=10,
                   headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
        env = forwarding_env(tmp_path, backend.url, KEY,
                             HEALERT_FORWARD_TIMEOUT=str(TIMEOUT), HEALERT_BACKOFF_MAX="0.5")
        started = time.monotonic()
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        _port, ops = agent.ports()
        wait_for(lambda: metric(ops, "healert_outbox_depth") == 0, timeout=30 * TIMEOUT,
                 what="the rows marked an hour ahead settled")
        took = time.monotonic() - started
        described = sorted(e["description"] for e in backend.accepted())
        assert metric(ops, "healert_forward_reconciled_total", result="delivered") == 1
        assert metric(ops, "healert_forward_reconciled_total", result="resent") == 1
        assert agent.stop() == 0
    print(f"in flight an hour ahead: all 3 rows settled {took:.1f} s after the start")
    assert described == ["clock event 0", "clock event 1", "clock event 2"]  # each once
