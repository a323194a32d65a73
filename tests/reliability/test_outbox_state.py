"""What an operator (or an attacker with a shell) can do to the outbox while `serve` runs.

Must hold: a batch whose friction events do not fit is refused whole with 503 and
Retry-After, and nothing answered 200 before it is evicted; `outbox purge --corrupt`
refuses while an agent holds the outbox and when the file is healthy; an outbox moved
away or deleted under a running agent makes it answer 503 and report unready, loudly,
instead of acknowledging into a file nobody will read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from healert_webhook.outbox import Outbox

from support.agent import JSON, Agent, metric, readyz, serve_args
from support.events import exec_event
from support.paths import ROOT


def batch(tag: str, events: int) -> bytes:
    return orjson.dumps([exec_event(i, tag=tag) for i in range(events)])


def queued_keys(state: Path) -> list[str]:
    box = Outbox(state / "outbox.db")
    try:
        return [row.key for row in box.head(1_000_000)]
    finally:
        box.close()


def outbox_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healert_webhook", "outbox", *args,
                           "--state-dir", "state"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                          check=False, timeout=60)


def test_a_batch_that_does_not_fit_is_refused_whole_and_nothing_is_evicted(
        tmp_path: Path) -> None:
    agent = Agent(serve_args("state", "--outbox-max-events", "500"), tmp_path)
    try:
        port, ops = agent.ports()
        url = f"http://127.0.0.1:{port}/audit"
        with httpx.Client(timeout=30) as client:
            assert client.post(url, content=batch("fits", 400), headers=JSON).status_code \
                == 200
            kept = queued_keys(tmp_path / "state")
            assert len(kept) == 400
            refused = client.post(url, content=batch("over", 400), headers=JSON)
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
            assert "full" in refused.json()["error"]
            # the resent first batch is all duplicates: it needs no room and is taken
            assert client.post(url, content=batch("fits", 400), headers=JSON).status_code \
                == 200
        assert queued_keys(tmp_path / "state") == kept  # nothing evicted, nothing added
        ready = readyz(ops)
        assert ready.status_code == 503 and "outbox full" in ready.text
        assert metric(ops, "healert_outbox_full") == 1
        assert "HEALERT_OUTBOX_MAX_EVENTS=500" in agent.output()
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_purge_refuses_while_the_agent_holds_the_outbox_and_when_it_is_healthy(
        tmp_path: Path) -> None:
    agent = Agent(serve_args(), tmp_path)
    try:
        port, ops = agent.ports()
        url = f"http://127.0.0.1:{port}/audit"
        assert httpx.post(url, content=batch("kept", 50), headers=JSON).status_code == 200
        held = outbox_cli(tmp_path, "purge", "--corrupt", "--yes")
        assert held.returncode == 1
        assert "open in another process" in held.stderr
        assert (tmp_path / "state" / "outbox.db").exists()
        assert httpx.post(url, content=batch("after", 5), headers=JSON).status_code == 200
        assert readyz(ops).status_code == 200
        assert agent.stop() == 0
    finally:
        agent.kill()
    healthy = outbox_cli(tmp_path, "purge", "--corrupt", "--yes")
    assert healthy.returncode == 1
    assert "not corrupt" in healthy.stderr
    assert len(queued_keys(tmp_path / "state")) == 55  # every acknowledged event is there


def test_an_outbox_moved_or_deleted_under_the_agent_is_never_acknowledged_into(
        tmp_path: Path) -> None:
    for how in ("moved", "deleted"):
        cwd = tmp_path / how
        cwd.mkdir()
        agent = Agent(serve_args(), cwd)
        try:
            port, ops = agent.ports()
            url = f"http://127.0.0.1:{port}/audit"
            assert httpx.post(url, content=batch("before", 20), headers=JSON).status_code \
                == 200
            if how == "moved":
                for suffix in ("", "-wal", "-shm"):
                    src = cwd / "state" / f"outbox.db{suffix}"
                    if src.exists():
                        src.rename(cwd / f"aside{suffix}")
            else:
                shutil.rmtree(cwd / "state")
            answer = httpx.post(url, content=batch("after", 20), headers=JSON, timeout=30)
            assert answer.status_code == 503
            ready = readyz(ops)
            assert ready.status_code == 503
            assert "moved, deleted or replaced" in ready.text
            agent.wait_line(r"ERROR .*no longer the one this process opened")
            assert agent.alive()
        finally:
            agent.kill()
        if how == "moved":  # what was acknowledged is in the moved file, all of it
            box = Outbox(cwd / "aside")
            assert len(box.head(1000)) == 20
            box.close()
