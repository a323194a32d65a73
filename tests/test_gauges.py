"""The outbox gauges of the real `serve` process match the outbox, whatever delivery does.

Each test fills an outbox (five events waiting, the oldest an hour old, two dead letters),
starts `python -m healert_webhook serve` on it, and reads /metrics: the gauges must show
that backlog at start and follow it while deliveries cannot make progress: a backend that
never answers, another process delivering from the same outbox, a backend refusing the key
(deliveries paused), no backend at all.
"""

from __future__ import annotations

import fcntl
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from healert_webhook.outbox import Outbox
from healert_webhook.records import Stats

from support.agent import JSON, Agent, metric, packaged_detector, serve_args
from support.backend import run_backend
from support.events import event_list, exec_event
from support.servers import wait_for

QUEUED, DEAD, AGE = 5, 2, 3600.0
# Well above the one second the gauges take, far below what a stalled forwarder takes
# (a 60 s health check, a probe an hour away): the wait can only time out on a stale gauge.
WITHIN = 15.0


def prefill(state: Path) -> None:
    """QUEUED events waiting (the oldest AGE seconds old) and DEAD dead letters."""
    events = [exec_event(i, tag="gauge") for i in range(QUEUED + DEAD)]
    frictions = packaged_detector().detect(events, Stats())
    assert len(frictions) == QUEUED + DEAD
    box = Outbox(state / "outbox.db")
    box.store(frictions)
    for row in box.head(DEAD):
        box.dead_letter(row.seq, status=422, reason="refused in a test", answer=None)
    box.close()
    with sqlite3.connect(state / "outbox.db") as conn:  # an hour-old backlog
        conn.execute("UPDATE queue SET created = created - ?", (AGE,))
    conn.close()


def gauges(ops: int) -> tuple[float, float, float]:
    """(depth, dead letters, age of the oldest waiting event) from the agent's /metrics."""
    return (metric(ops, "healert_outbox_depth"), metric(ops, "healert_dead_letters"),
            metric(ops, "healert_outbox_oldest_age_seconds"))


def backlog_shown(ops: int, depth: int = QUEUED) -> bool:
    shown_depth, dead, age = gauges(ops)
    return shown_depth == depth and dead == DEAD and AGE <= age < AGE + 600


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    prefill(path)
    return path


@pytest.fixture
def silent_backend() -> Iterator[str]:
    """A backend URL whose port takes connections (the kernel completes them) and never
    answers: the forwarder's health check waits its whole timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def start(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[Agent, int, int]:
    agent = Agent(serve_args("state", *extra), tmp_path, env)
    port, ops = agent.ports()
    return agent, port, ops


def post_one_exec(port: int) -> None:
    body = event_list([exec_event(99, tag="gauge-new")])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                        timeout=30)
    assert answer.status_code == 200, answer.text


def test_gauges_show_the_backlog_at_start_while_the_backend_does_not_answer(
        tmp_path: Path, state: Path, silent_backend: str) -> None:
    agent, _port, ops = start(tmp_path, {"HEALERT_BACKEND_URL": silent_backend},
                              "--forward-timeout", "60")
    try:
        wait_for(lambda: backlog_shown(ops), timeout=WITHIN, what=f"backlog: {gauges(ops)}")
        assert "status ok" not in agent.output()  # the health check is still waiting
    finally:
        assert agent.stop() == 0


def test_gauges_show_the_backlog_while_another_process_holds_the_outbox(
        tmp_path: Path, state: Path) -> None:
    with run_backend(tmp_path, api_key=None) as backend, \
            (state / "outbox.db.forward.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another forwarder"
        agent, port, ops = start(tmp_path, {"HEALERT_BACKEND_URL": backend.url})
        try:
            agent.wait_line("another process is delivering")
            post_one_exec(port)
            wait_for(lambda: backlog_shown(ops, QUEUED + 1), timeout=WITHIN,
                     what=f"backlog: {gauges(ops)}")
        finally:
            assert agent.stop() == 0
        assert backend.accepted() == []


def test_gauges_follow_the_outbox_while_deliveries_are_paused(
        tmp_path: Path, state: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("not-the-key\n")
    with run_backend(tmp_path, api_key="the-key") as backend:
        env = {"HEALERT_BACKEND_URL": backend.url, "HEALERT_API_KEY_FILE": str(key_file)}
        agent, port, ops = start(tmp_path, env, "--forward-probe-interval", "3600")
        try:
            wait_for(lambda: metric(ops, "healert_forward_paused") == 1, what="paused")
            wait_for(lambda: backlog_shown(ops), timeout=WITHIN, what=f"backlog: {gauges(ops)}")
            age = gauges(ops)[2]
            post_one_exec(port)  # stored while paused
            wait_for(lambda: backlog_shown(ops, QUEUED + 1), timeout=WITHIN,
                     what=f"the new event: {gauges(ops)}")
            wait_for(lambda: gauges(ops)[2] >= age + 2, timeout=WITHIN,
                     what=f"the oldest event ageing: {gauges(ops)}")
            assert metric(ops, "healert_forward_paused") == 1  # still paused throughout
        finally:
            assert agent.stop() == 0
        assert backend.accepted() == []


def test_gauges_follow_the_outbox_without_a_backend(tmp_path: Path, state: Path) -> None:
    agent, port, ops = start(tmp_path, {})
    try:
        wait_for(lambda: backlog_shown(ops), timeout=WITHIN, what=f"backlog: {gauges(ops)}")
        post_one_exec(port)
        wait_for(lambda: backlog_shown(ops, QUEUED + 1), timeout=WITHIN,
                 what=f"the new event: {gauges(ops)}")
    finally:
        assert agent.stop() == 0
    assert "no HEALERT_BACKEND_URL" in agent.output()
