"""Event times far in the future, through the real `serve` and `tail`.

The backend lists an entity's events newest first, 500 at most; the read that verifies a
lost answer looks there. 500 events stamped in the year 2999 used to be sent as they were:
from then on every real event of that entity was "older than the 500 newest", so a lost
answer could never be verified and the event was sent twice. Now such a time (more than
audit.FUTURE_SKEW ahead of the moment the event was received) is repaired like any bad
one: the stage time when it is usable, else none (the backend stamps its own), counted in
`healert_event_fixups_total`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from healert_webhook.outbox import Outbox

from support.agent import JSON, Agent, forwarding_env, metric, serve_args
from support.backend import run_backend
from support.events import exec_event
from support.servers import wait_for

KEY = "future-time-key"
AHEAD = 500  # the backend shows this many of an entity's newest events


def stamp(when: datetime) -> str:
    """An apiserver time: UTC, microseconds, Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamped(n: int, tag: str, request: str, stage: str) -> dict[str, Any]:
    """An exec by a person on payments-api, with the given request and stage times."""
    event = exec_event(n, tag=tag)
    event["requestReceivedTimestamp"] = request
    event["stageTimestamp"] = stage
    return event


def post(port: int, events: list[dict[str, Any]]) -> None:
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=orjson.dumps(events),
                        headers=JSON, timeout=60)
    assert answer.status_code == 200, answer.text


def test_future_times_are_repaired_so_a_lost_answer_is_still_verified(
        tmp_path: Path, agents: list[Agent]) -> None:
    now = datetime.now(UTC)
    ahead = [stamped(i, "ahead", f"2999-01-01T00:00:00.{i:06d}Z",
                     stamp(now - timedelta(minutes=10, microseconds=i)))
             for i in range(AHEAD)]
    both_ahead = stamped(AHEAD, "both", "2999-06-01T00:00:00.000001Z",
                         "2999-06-01T00:00:00.000002Z")
    with run_backend(tmp_path, api_key=KEY, limit=1_000_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY, HEALERT_FORWARD_TIMEOUT="1",
                             HEALERT_BACKOFF_MAX="0.3")
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, ops = agent.ports()
        post(port, [*ahead, both_ahead])
        wait_for(lambda: len(backend.accepted()) == AHEAD + 1, timeout=120,
                 what="the events stamped ahead delivered")
        assert metric(ops, "healert_event_fixups_total", source="webhook",
                      fixup="future_timestamp_from_stage") == AHEAD
        assert metric(ops, "healert_event_fixups_total", source="webhook",
                      fixup="future_timestamp_missing") == 1
        times = [event.get("timestamp") for event in backend.accepted()]
        assert not any(t is not None and t.startswith("2999") for t in times)
        assert times.count(None) == 1  # left to the backend's own clock

        # A real event whose answer is lost: the agent dies while the backend holds it.
        backend.control(mode="hold_stored")
        post(port, [stamped(AHEAD + 1, "lost", stamp(now), stamp(now))])
        wait_for(lambda: backend.view()["held"] >= 1, timeout=60, what="the request held")
        agent.kill()
        backend.release()
        backend.control(mode="ok")
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        agent.ports()
        wait_for(lambda: "already has it" in agent.output()
                 or "does not have it" in agent.output()
                 or "cannot be checked" in agent.output()
                 or len(backend.accepted()) > AHEAD + 2, timeout=60,
                 what="the lost answer settled")
        lost = [e for e in backend.accepted() if e["description"].startswith("kubectl exec")
                and e.get("timestamp") == stamp(now)]
        assert len(lost) == 1, agent.output()[-3000:]  # verified at the backend, not resent
        print(f"future times: {AHEAD} stamped 2999 delivered with their stage time, 1 with "
              f"both times ahead left to the backend; the lost answer after them: "
              f"{len(lost)} copy at the backend")
        assert agent.stop() == 0


def test_the_tailer_repairs_them_too(tmp_path: Path, agents: list[Agent]) -> None:
    now = datetime.now(UTC)
    log = tmp_path / "audit.log"
    lines = [stamped(1, "t-ahead", "2999-01-01T00:00:00.000001Z", stamp(now)),
             stamped(2, "t-near", stamp(now + timedelta(seconds=30)), stamp(now))]
    log.write_bytes(b"".join(orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                                           **event}) + b"\n" for event in lines))
    agent = Agent(["tail", "--audit-log", str(log), "--from", "start", "--state-dir", "state",
                   "--ops-listen", "127.0.0.1:0"], tmp_path)
    agents.append(agent)
    ops = int(agent.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
    wait_for(lambda: metric(ops, "healert_friction_events_total", rule="kubectl-exec") == 2,
             timeout=30, what="both lines read")
    assert metric(ops, "healert_event_fixups_total", source="tail",
                  fixup="future_timestamp_from_stage") == 1
    assert agent.stop() == 0
    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        stamps = sorted(row.event["timestamp"] for row in box.head(10))
    finally:
        box.close()
    # the line 2999 is repaired; 30 s ahead is within the skew and kept as written
    assert stamps == sorted([stamp(now), lines[1]["requestReceivedTimestamp"]])
