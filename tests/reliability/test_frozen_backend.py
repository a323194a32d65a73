"""A send whose answer was lost is not resent blindly while the backend cannot be read.

Must hold (issue 22 item 14): an uncertain send waits for a successful `GET /friction`
(backing off, shown in /metrics and in /readyz's body) before it is resent; a "missing"
that follows a stall is read again after a short delay before it is trusted; only after
HEALERT_FORWARD_UNCERTAIN_MAX_WAIT is it resent unverified.
Before: three failed reads and the send went again, into the frozen backend's queue;
when it woke it stored both (4 of 4 rounds against the real backend left a duplicate).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import httpx
import orjson

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

KEY = "frozen-backend-key-5c"
_TAGS = itertools.count()


def post_batch(port: int, events: int) -> bytes:
    n = next(_TAGS)
    body = orjson.dumps([exec_event(n * 100 + i, tag=f"frozen{n}") for i in range(events)])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return body


def once(backend: Backend, batches: list[bytes]) -> tuple[int, int, int]:
    return compare(expected_bodies(batches), backend.accepted())


def test_a_backend_frozen_across_a_restart_gets_each_event_once(
        tmp_path: Path, agents: list[Agent], long_run: bool) -> None:
    freeze = 70.0 if long_run else 20.0  # the 70 s under --long
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY, HEALERT_FORWARD_TIMEOUT="1",
                             HEALERT_BACKOFF_MAX="2")
        first = Agent(serve_args(), tmp_path, env)
        agents.append(first)
        port, _ops = first.ports()
        batches = [post_batch(port, 2)]
        wait_for(lambda: once(backend, batches)[0] == 0, timeout=30, what="first deliveries")
        backend.freeze()
        frozen = time.monotonic()
        try:
            batches.append(post_batch(port, 1))  # its send goes into the frozen backend
            first.wait_line("may have reached the backend", timeout=30)
            first.kill()
            second = Agent(serve_args(), tmp_path, env)
            agents.append(second)
            _port, ops = second.ports()
            while time.monotonic() < frozen + freeze:
                assert second.alive(), second.output()[-3000:]
                time.sleep(0.5)
            awaiting = metric(ops, "healert_forward_awaiting_read")
            shown = readyz(ops).text
        finally:
            backend.thaw()
        wait_for(lambda: metric(ops, "healert_outbox_depth") == 0, timeout=90,
                 what="settled after the thaw")
        time.sleep(3.0)  # anything still on its way would land now
        result = once(backend, batches)
        found = metric(ops, "healert_forward_reconciled_total", result="delivered")
        unverified = metric(ops, "healert_forward_uncertain_resends_total")
        assert second.stop() == 0
    print(f"frozen {freeze:.0f} s across a restart: lost, duplicates, unexpected = {result}; "
          f"found at the backend {found:.0f}, resent unverified {unverified:.0f}")
    assert result == (0, 0, 0)
    assert found == 1  # the backend stored the first send when it woke: found, not resent
    assert unverified == 0
    assert awaiting == 1  # the wait was shown while it lasted
    assert "GET /friction" in shown, shown


def test_a_missing_right_after_a_stall_is_read_again_before_it_is_trusted(
        tmp_path: Path, agents: list[Agent]) -> None:
    # The backend takes 3 s before it stores an event, the agent waits 2 s for an answer:
    # its first read comes while the event is not stored yet, and says "missing".
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY, HEALERT_FORWARD_TIMEOUT="2",
                             HEALERT_BACKOFF_MAX="0.5")
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, ops = agent.ports()
        backend.control(latency=3.0)
        batches = [post_batch(port, 1)]
        wait_for(lambda: metric(ops, "healert_outbox_depth") == 0, timeout=60,
                 what="settled")
        backend.control(latency=0.0)
        time.sleep(4.0)  # a resend would be stored by now
        result = once(backend, batches)
        found = metric(ops, "healert_forward_reconciled_total", result="delivered")
        assert agent.stop() == 0
    print(f"slow backend: lost, duplicates, unexpected = {result}; found {found:.0f}")
    assert result == (0, 0, 0)
    assert found == 1
