"""A FIFO where the agent expects a file, against the real processes.

`tail`: the followed log is renamed away and a FIFO made at its path. The tailer must not
block opening it: it says so once (log line), in a metric and in /readyz, keeps watching,
and reads the regular file put back later. `serve`: the rules file and the webhook token
file are each replaced by a FIFO, then SIGHUP and the once-a-second poll. Neither may hang:
the old rules and tokens stay in force, and SIGTERM ends the process with exit code 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from healert_webhook.auth import TokenAuth, TokenError
from healert_webhook.rules import RulesError, load_rules
from healert_webhook.sources import tailfiles

from support.agent import JSON, Agent, metric, readyz, serve_args
from support.events import event_list, exec_event
from support.servers import wait_for

TOKEN = "fifo-test-token-0123456789"
STOP_WITHIN = 15.0  # generous on a shared CPU; the agent gives its parts 4 s each


def log_line(n: int, tag: str) -> bytes:
    """One audit log line of an exec by a person (a friction event for the packaged rules)."""
    event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", **exec_event(n, tag=tag)}
    return orjson.dumps(event) + b"\n"


def execs(ops: int) -> float:
    return metric(ops, "healert_friction_events_total", rule="kubectl-exec")


def stop_in_time(agent: Agent) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the exit took (fails past STOP_WITHIN)."""
    start = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(STOP_WITHIN)
    return code, time.monotonic() - start


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_tail_reports_a_fifo_at_the_path_and_reads_the_file_put_back(
        tmp_path: Path, agents: list[Agent]) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(log_line(1, "before"))
    agent = Agent(["tail", "--audit-log", str(log), "--from", "start", "--state-dir", "state",
                   "--ops-listen", "127.0.0.1:0", "--poll-interval", "0.05"], tmp_path)
    agents.append(agent)
    ops = int(agent.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
    wait_for(lambda: execs(ops) == 1, timeout=30, what="the first exec")
    wait_for(lambda: readyz(ops).status_code == 200, timeout=30, what="ready")

    os.rename(log, tmp_path / "moved-away.log")
    os.mkfifo(log)
    fifo_at = time.monotonic()
    wait_for(lambda: readyz(ops).status_code == 503, timeout=30, what="unready on the FIFO")
    unready_after = time.monotonic() - fifo_at
    assert "FIFO" in readyz(ops).text
    assert metric(ops, "healert_tail_not_regular_file") == 1
    time.sleep(1.0)  # twenty polls of the FIFO: still one log line for it
    assert agent.output().count("is a FIFO") == 1, agent.output()

    log.unlink()
    log.write_bytes(log_line(2, "after") + log_line(3, "after"))
    back_at = time.monotonic()
    wait_for(lambda: execs(ops) == 3, timeout=30, what="the file put back read")
    wait_for(lambda: readyz(ops).status_code == 200, timeout=30, what="ready again")
    read_after = time.monotonic() - back_at
    assert metric(ops, "healert_tail_not_regular_file") == 0
    code, took = stop_in_time(agent)
    print(f"tail FIFO: unready after {unready_after:.2f} s, 1 log line, the file put back "
          f"read after {read_after:.2f} s, SIGTERM exit {code} in {took:.2f} s")
    assert code == 0
    assert "Traceback" not in agent.output()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_serve_with_rules_and_token_files_turned_into_fifos_neither_hangs(
        tmp_path: Path, agents: list[Agent]) -> None:
    from support.paths import ROOT

    rules = tmp_path / "rules.yaml"
    rules.write_bytes((ROOT / "rules.yaml").read_bytes())
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    agent = Agent(serve_args("state", "--rules", str(rules), "--webhook-token-file",
                             str(tokens)), tmp_path)
    agents.append(agent)
    port, ops = agent.ports()
    url = f"http://127.0.0.1:{port}/audit"
    auth = {**JSON, "authorization": f"Bearer {TOKEN}"}

    def post(tag: str) -> int:
        body = event_list([exec_event(1, tag=tag)])
        return httpx.post(url, content=body, headers=auth, timeout=30).status_code

    assert post("before") == 200
    for path in (rules, tokens):
        os.rename(path, path.with_name(path.name + ".old"))
        os.mkfifo(path)
    time.sleep(2.5)  # the poll looks at both files twice
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_line(r"SIGHUP received", timeout=30)
    wait_for(lambda: "rules reload failed" in agent.output(), timeout=30,
             what="the rules reload refused")
    assert "FIFO" in agent.output()
    # still serving, with the old rules and the old tokens
    assert httpx.get(f"http://127.0.0.1:{ops}/healthz", timeout=10).status_code == 200
    before = execs(ops)
    assert post("after") == 200
    assert execs(ops) == before + 1
    agent.proc.send_signal(signal.SIGHUP)  # a second forced reload while the first is done
    agent.wait_line(r"(?s)SIGHUP received.*SIGHUP received", timeout=30)
    code, took = stop_in_time(agent)
    print(f"serve with FIFO rules and token files: still serving with the old rules and "
          f"tokens after 2 SIGHUPs and the poll; SIGTERM exit {code} in {took:.2f} s")
    assert code == 0, agent.output()
    assert "Traceback" not in agent.output()


def raised_promptly(call: Callable[[], Any]) -> BaseException | None:
    """What `call` raised, run on a daemon thread that must end within 10 s (a call
    blocked on a FIFO would not: the test fails instead of hanging)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "blocked on the FIFO"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_every_file_the_agent_reads_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    exc = raised_promptly(lambda: load_rules(fifo))
    assert isinstance(exc, RulesError) and "is a FIFO" in exc.problems[0]
    exc = raised_promptly(lambda: TokenAuth(fifo, None))
    assert isinstance(exc, TokenError) and "is a FIFO" in str(exc)
    exc = raised_promptly(lambda: tailfiles.open_stream(fifo, live=True))
    assert isinstance(exc, OSError) and "FIFO" in tailfiles.explain_open_error(fifo, exc)
    # a FIFO named like a rotated generation, plain or compressed
    assert raised_promptly(lambda: tailfiles.read_head(fifo)) is None
    assert raised_promptly(lambda: tailfiles.read_head(fifo, compressed=True)) is None
