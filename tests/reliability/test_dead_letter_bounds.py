"""Dead letters are bounded by age and count in the real `serve` process.

Must hold (issue 22 item 9): dead letters older than HEALERT_DEAD_LETTER_MAX_AGE_DAYS
and, oldest first, those over HEALERT_DEAD_LETTER_MAX_EVENTS are pruned, counted by
reason and logged in one line; the key of a pruned dead letter still keeps a late
duplicate of its event out of the queue for the dedup window.
Before: dead letters were never pruned (300,000 of them: 168 MB).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import orjson

from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction, Stats

from support.agent import JSON, Agent, forwarding_env, metric, packaged_detector, serve_args
from support.backend import run_backend
from support.events import exec_event
from support.servers import wait_for

KEY = "dead-letter-bounds-key"
FILLERS = 600
OLD_FILLERS = 200
BOUND = 300
DAY = 86_400.0


def filler(n: int) -> Friction:
    return Friction(f"f{n:031x}", "exec-into-pod", {
        "entity_ref": f"component:default/svc-{n}", "type": "exec-into-pod",
        "severity": "high", "description": f"refused event {n}"})


def test_dead_letters_are_pruned_and_their_keys_still_stop_a_late_duplicate(
        tmp_path: Path, agents: list[Agent]) -> None:
    batch = orjson.dumps([exec_event(i, tag="pruned") for i in range(3)])
    late = packaged_detector().detect(orjson.loads(batch), Stats())
    assert len(late) == 3
    db = tmp_path / "state" / "outbox.db"
    box = Outbox(db)
    box.store([*late, *(filler(n) for n in range(FILLERS))])
    box.close()
    now = time.time()
    with sqlite3.connect(db) as conn:  # refused long ago (the batch's three among them)
        conn.execute("INSERT INTO dead (key, rule, event, created, dead_at, status, reason) "
                     "SELECT key, rule, event, created, ?, 422, 'refused' FROM queue",
                     (now - DAY,))
        conn.execute("DELETE FROM queue")
        old = [f.key for f in late] + [filler(n).key for n in range(OLD_FILLERS)]
        conn.executemany("UPDATE dead SET dead_at = ? WHERE key = ?",
                         [(now - 40 * DAY, key) for key in old])
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY,
                             HEALERT_DEAD_LETTER_MAX_EVENTS=str(BOUND))
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, ops = agent.ports()
        wait_for(lambda: metric(ops, "healert_dead_letters") == BOUND, timeout=30,
                 what="dead letters pruned to the bound")
        by_age = metric(ops, "healert_dead_letters_pruned_total", reason="age")
        by_count = metric(ops, "healert_dead_letters_pruned_total", reason="count")
        suppressed = metric(ops, "healert_duplicates_suppressed_total", source="webhook")
        answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=batch, headers=JSON,
                            timeout=30)
        assert answer.status_code == 200
        assert metric(ops, "healert_duplicates_suppressed_total", source="webhook") == \
            suppressed + 3
        assert metric(ops, "healert_outbox_depth") == 0
        assert agent.stop() == 0
        assert backend.accepted() == []
    lines = [line for line in agent.output().splitlines() if "dead letters pruned" in line]
    print(f"pruned {by_age:.0f} by age, {by_count:.0f} by count; {lines}")
    assert (by_age, by_count) == (OLD_FILLERS + 3, FILLERS + 3 - OLD_FILLERS - 3 - BOUND)
    assert len(lines) == 1  # one line for the whole sweep
    box = Outbox(db)
    kept = box.dead_letters(limit=10_000)
    box.close()
    # the newest BOUND survive: fillers 200..599 were refused a day ago, the oldest go first
    assert len(kept) == BOUND and all(d.dead_at > now - 2 * DAY for d in kept)
