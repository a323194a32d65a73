"""What the backend answers, and what the outbox holds, cannot end the real `serve` process.

Must hold (issue 22 items 1 and 2):
- a 429 whose `Retry-After` is no number (`²`: `str.isdigit` accepts it, `float` does
  not) is retried as if it had none;
- a `GET /friction` answer nested 100,000 arrays deep is a failed read, not a crash;
- a queued row whose stored event is not JSON is set aside as a dead letter with the
  reason while the rows after it are delivered;
- answers of 1000 MiB to `POST /events` and `GET /friction` are read only up to a cap:
  the agent's memory stays flat, the send counts as failed (its event is then looked
  for, and found: delivered once), the read as failed.
Before: each of the first three ended the forwarder, so the process exited 1 (and,
for the row and a backend that kept answering so, again after every restart); the
large answers were read whole (1000 MiB took RSS to 3-3.9 GiB).
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import httpx
import orjson

from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.agent import (
    JSON,
    Agent,
    compare,
    expected_bodies,
    forwarding_env,
    metric,
    readyz,
    serve_args,
)
from support.backend import Backend, run_backend
from support.events import exec_event
from support.servers import wait_for

KEY = "untrusted-backend-key-77"
MiB = 1024 * 1024
_TAGS = itertools.count()


def agent_env(tmp_path: Path, url: str, **more: str) -> dict[str, str]:
    return forwarding_env(tmp_path, url, KEY, **{
        "HEALERT_BACKOFF_MAX": "0.5", "HEALERT_FORWARD_TIMEOUT": "1", **more})


def post_batch(port: int, events: int = 2) -> bytes:
    n = next(_TAGS)
    body = orjson.dumps([exec_event(n * 100 + i, tag=f"untrusted{n}") for i in range(events)])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return body


def alive_until(agent: Agent, condition: object, timeout: float, what: str) -> None:
    """Wait for `condition()`; fail at once, with its output, if the agent exits."""
    def check() -> bool:
        assert agent.alive(), f"agent exited {agent.proc.poll()}:\n{agent.output()[-4000:]}"
        return bool(condition())  # type: ignore[operator]

    wait_for(check, timeout=timeout, what=what)


def once(backend: Backend, batches: list[bytes]) -> tuple[int, int, int]:
    return compare(expected_bodies(batches), backend.accepted())


def test_a_retry_after_that_is_no_number_is_ignored(tmp_path: Path,
                                                    agents: list[Agent]) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, backend.url))
        agents.append(agent)
        port, _ops = agent.ports()
        backend.control(mode="429", retry_after="\u00b2")
        batches = [post_batch(port)]
        alive_until(agent, lambda: backend.statuses().get(429, 0) >= 3, 30, "429s retried")
        backend.control(mode="ok")
        alive_until(agent, lambda: once(backend, batches)[0] == 0, 30, "delivered")
        assert once(backend, batches) == (0, 0, 0)
        assert agent.stop() == 0


def test_a_friction_answer_nested_too_deep_is_a_failed_read(tmp_path: Path,
                                                            agents: list[Agent]) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, backend.url))
        agents.append(agent)
        port, ops = agent.ports()
        # stored, answered after the agent's 1 s timeout: the agent must read to know
        backend.control(latency_after=2.0, friction_raw="[" * 100_000)
        batches = [post_batch(port, events=1)]
        alive_until(agent, lambda: backend.view()["read_requests"] >= 2, 30,
                    "the deep answer read twice")
        assert "GET /friction" in readyz(ops).text  # the wait is shown
        assert len(backend.accepted()) == 1  # not sent again while the read fails
        backend.control(latency_after=0.0, friction_raw=None)
        alive_until(agent, lambda: metric(ops, "healert_outbox_depth") == 0, 60, "settled")
        assert once(backend, batches) == (0, 0, 0)
        assert metric(ops, "healert_forward_reconciled_total", result="delivered") == 1
        assert agent.stop() == 0


def test_a_stored_event_that_is_not_json_is_set_aside(tmp_path: Path,
                                                      agents: list[Agent]) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db")
    events = [{"entity_ref": f"component:default/svc-{n}", "type": "exec-into-pod",
               "severity": "high", "description": f"event-{n}"} for n in range(3)]
    box.store([Friction(f"{n:032x}", "exec-into-pod", e) for n, e in enumerate(events)])
    box.close()
    with sqlite3.connect(state / "outbox.db") as db:  # what another program could leave
        db.execute("UPDATE queue SET event = ? WHERE key = ?", (b"\x00{not json", f"{1:032x}"))
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, backend.url))
        agents.append(agent)
        _port, ops = agent.ports()
        alive_until(agent, lambda: metric(ops, "healert_outbox_depth") == 0, 30, "drained")
        assert [e["description"] for e in backend.accepted()] == ["event-0", "event-2"]
        assert metric(ops, "healert_dead_lettered_total", reason="undecodable") == 1
        assert agent.stop() == 0
    box = Outbox(state / "outbox.db")
    [letter] = box.dead_letters()
    box.close()
    assert letter.key == f"{1:032x}" and "not valid JSON" in letter.reason


def test_answers_of_1000_mib_are_read_up_to_a_cap(tmp_path: Path,
                                                  agents: list[Agent]) -> None:
    size = 1000 * MiB
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, backend.url))
        agents.append(agent)
        port, ops = agent.ports()
        batches = [post_batch(port, events=1)]
        alive_until(agent, lambda: len(backend.accepted()) == 1, 30, "a first delivery")
        before = agent.memory()
        # the event is stored, then 1000 MiB of answer; then every read is 1000 MiB too
        backend.control(answer_bytes=size, friction_bytes=size)
        batches.append(post_batch(port, events=1))
        alive_until(agent, lambda: backend.view()["read_requests"] >= 3, 60,
                    "the long answers read")
        during = agent.memory()
        assert during["VmHWM"] - before["VmHWM"] < 64, (before, during)
        assert metric(ops, "healert_forward_attempts_total", outcome="answer_too_large") >= 1
        assert len(backend.accepted()) == 2  # the large answer was not taken for a refusal
        backend.control(answer_bytes=0, friction_bytes=0)
        alive_until(agent, lambda: metric(ops, "healert_outbox_depth") == 0, 60, "settled")
        after = agent.memory()
        assert once(backend, batches) == (0, 0, 0)
        assert agent.stop() == 0
    print(f"1000 MiB answers: RSS {before['VmRSS']} -> {during['VmRSS']} -> "
          f"{after['VmRSS']} MiB, peak {before['VmHWM']} -> {after['VmHWM']} MiB")
    assert after["VmHWM"] - before["VmHWM"] < 64, (before, during, after)
