"""The webhook's receive path against clients that pipeline without end or send bytes
that are no HTTP, on the real agent.

The real `serve` process on loopback (plain HTTP, no authentication, so the apiserver's
fast path serves the requests), raw sockets so the test decides how bytes arrive, memory
read from /proc.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.agent import Agent, metric, serve_args

# The smallest request the fast path takes: a batch of no events, answered 200.
TINY = (b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n[]")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, int, int]]:
    started = Agent(serve_args(), tmp_path)
    try:
        port, ops = started.ports()
        yield started, port, ops
        assert started.alive(), started.output()[-3000:]
        assert started.stop() == 0
    finally:
        started.kill()


def test_pipelined_requests_never_queue_without_bound(agent: tuple[Agent, int, int]) -> None:
    """A client that pipelines requests faster than they are answered (while reading the
    answers) must not make the agent queue them without bound: reading the connection
    waits while requests already parsed wait for their turn. Before, each answer resumed
    reading and every request in the next read was queued: hundreds of thousands of
    requests, hundreds of MiB, from one connection in seconds."""
    proc, port, _ = agent
    before = proc.memory()["VmRSS"]
    blob = TINY * 2000
    most = 400_000  # requests sent at most (bounded in count and time)
    sent = answered = 0
    done = threading.Event()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def send() -> None:
            nonlocal sent
            try:
                while not done.is_set() and sent < most:
                    sock.sendall(blob)
                    sent += 2000
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 4.0
        grown = 0
        while time.monotonic() < deadline:
            answered += sock.recv(1 << 20).count(b"HTTP/1.1 200 ")
            grown = max(grown, proc.memory()["VmRSS"] - before)
        done.set()
        sock.shutdown(socket.SHUT_RDWR)
        sender.join(10)
    assert answered > 0
    assert grown < 40, f"RSS grew {grown} MiB for {sent} requests sent, {answered} answered"


def test_a_request_head_that_is_no_http_is_counted_and_logged(
        agent: tuple[Agent, int, int]) -> None:
    """Bytes the HTTP parser refuses are answered 400 by uvicorn: that answer counts in
    healert_webhook_requests_total like every other refusal, and a log line names the
    peer. Before, the 400 was answered but counted nowhere."""
    proc, port, ops = agent
    before = metric(ops, "healert_webhook_requests_total", code="400")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /audit HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert sock.recv(10) == b""  # closed
    assert metric(ops, "healert_webhook_requests_total", code="400") == before + 1
    proc.wait_line(r"connection from 127\.0\.0\.1:\d+ refused with 400: ")
