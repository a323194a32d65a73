"""Effectively-once delivery against the real `serve` process and the test backend.

The backend has no idempotency, so a request that reached it while its answer was lost
must be found there, not sent again. Must hold:
- the agent SIGKILLed while the backend holds a request, both after storing it and before
  dropping it unstored, over and over: every friction event arrives exactly once;
- a rollout (SIGTERM with a backlog and the backend down, a new agent on the same state
  directory): every event arrives once;
- a crash loop never puts more requests into a window of the backend's limit than the
  limit allows (the pacer's last send survives restarts).
"""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from support.agent import JSON, Agent, compare, expected_bodies, forwarding_env, serve_args
from support.backend import Backend, run_backend
from support.events import exec_event
from support.servers import wait_for

KEY = "delivery-once-key"
_TAGS = itertools.count()


def agent_env(tmp_path: Path, url: str, **more: str) -> dict[str, str]:
    return forwarding_env(tmp_path, url, KEY, **{
        "HEALERT_BACKOFF_MAX": "0.3", "HEALERT_FORWARD_TIMEOUT": "1", **more})


def post_batch(port: int, events: int = 5) -> bytes:
    """A batch of people's exec sessions, each with its own request time (microseconds)."""
    n = next(_TAGS)
    body = orjson.dumps([exec_event(n * 100 + i, tag=f"once{n}") for i in range(events)])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return body


def delivered_once(backend: Backend, batches: list[bytes]) -> tuple[int, int, int]:
    return compare(expected_bodies(batches), backend.accepted())


def test_kill_while_the_backend_holds_a_request_stored_or_not(tmp_path: Path) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = agent_env(tmp_path, backend.url)
        batches: list[bytes] = []
        agent = Agent(serve_args(), tmp_path, env)
        port, _ops = agent.ports()
        backend.control(mode="hold_stored")
        batches += [post_batch(port), post_batch(port)]
        kinds: Counter[str] = Counter()
        for round_ in range(8):
            mode = "hold_stored" if round_ % 2 == 0 else "hold_unstored"
            backend.control(mode=mode)
            wait_for(lambda: backend.view()["held"] >= 1, timeout=30, what=f"{mode}: held")
            agent.kill()  # with a request in the backend's hands
            kinds[mode] += 1
            backend.release()  # answered to nobody, or dropped unstored
            wait_for(lambda: backend.view()["held"] == 0, what="released")
            agent = Agent(serve_args(), tmp_path, env)
            port, _ops = agent.ports()
        backend.control(mode="ok")
        wait_for(lambda: delivered_once(backend, batches)[0] == 0, timeout=60,
                 what="every event delivered")
        lost, dups, unexpected = delivered_once(backend, batches)
        assert agent.stop() == 0
        logs = "".join(path.read_text() for path in tmp_path.glob("agent-*.log"))
    found = logs.count("the backend already has it")
    resent = logs.count("the backend does not have it")
    print(f"held kills: {dict(kinds)}, lost {lost}, duplicates {dups}, found at the backend "
          f"{found}, checked and resent {resent}")
    assert (lost, dups, unexpected) == (0, 0, 0)
    assert found >= 3 and resent >= 3  # both ways happened, both were settled by reading
    assert "cannot be checked" not in logs


def test_a_rollout_with_a_backlog_and_the_backend_down_delivers_everything_once(
        tmp_path: Path) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = agent_env(tmp_path, backend.url)
        backend.stop()  # down: the backlog builds up
        old = Agent(serve_args(), tmp_path, env)
        port, _ops = old.ports()
        batches = [post_batch(port) for _ in range(6)]
        old.proc.send_signal(signal.SIGTERM)  # what a rollout does
        assert old.proc.wait(40) == 0
        new = Agent(serve_args(), tmp_path, env)  # the same state directory
        new.ports()
        backend.start()
        try:
            wait_for(lambda: delivered_once(backend, batches)[0] == 0, timeout=60,
                     what="the backlog delivered")
            assert delivered_once(backend, batches) == (0, 0, 0)
            assert new.stop() == 0
        finally:
            new.kill()


def test_a_crash_loop_never_exceeds_the_backend_window(tmp_path: Path) -> None:
    # A 10 s window of 4 requests; 24 a minute paced at 95% is one every 2.6 s, at most
    # 4 in any 10 s. Each agent is killed right after its first request and restarted:
    # a pacer that started fresh would send at once every time, many times per window.
    with run_backend(tmp_path, api_key=KEY, limit=4, window=10.0) as backend:
        env = agent_env(tmp_path, backend.url, HEALERT_FORWARD_RATE="24")
        feeder = Agent(serve_args(), tmp_path, {**env, "HEALERT_BACKEND_URL": ""})
        port, _ops = feeder.ports()
        batches = [post_batch(port, events=4) for _ in range(5)]
        assert feeder.stop() == 0
        for _ in range(8):
            seen = len(backend.accepted())
            agent = Agent(serve_args(), tmp_path, env)
            agent.ports()
            wait_for(lambda s=seen: len(backend.accepted()) > s, timeout=30,
                     what="a request")
            agent.kill()
        view: dict[str, Any] = backend.view()
        statuses = backend.statuses()
    print(f"crash loop: {len(backend.accepted())} accepted in 8 restarts, most in one window "
          f"{view['max_in_window']}, statuses {statuses}")
    assert 429 not in statuses, statuses
    assert view["max_in_window"] <= 4
    assert len(batches) == 5
