"""The webhook's receive path against clients that pipeline without end, send bytes that
are no HTTP (alone, or pipelined behind batches) or break a chunked body, on the real
agent.

The real `serve` process on loopback (plain HTTP, no authentication, so the apiserver's
fast path serves the requests), raw sockets so the test decides how bytes arrive; memory
read from /proc, counts from its /metrics, errors from its log.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from support.agent import Agent, metric, serve_args
from support.events import exec_event
from support.servers import wait_for

# The smallest request the fast path takes: a batch of no events, answered 200.
TINY = (b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n[]")


GARBAGE = b"NO HTTP AT ALL\x01\r\n\r\n"  # the HTTP parser refuses this head


def post(body: bytes) -> bytes:
    """A POST of `body` to the webhook, as the fast path takes it."""
    return (b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


def batch(tag: str) -> bytes:
    """A batch of one kubectl exec, which the agent stores (on a worker thread)."""
    return orjson.dumps([exec_event(1, tag=tag)])


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the agent writes until it closes the connection."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def codes(ops: int) -> dict[str, float]:
    """healert_webhook_requests_total by code."""
    return {code: metric(ops, "healert_webhook_requests_total", code=code)
            for code in ("200", "400", "499")}


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


def test_a_pipelined_request_served_when_its_connection_ends_raises_nothing(
        agent: tuple[Agent, int, int]) -> None:
    """Two batches pipelined, then bytes that are no HTTP: the connection ends while the
    first batch is being stored. uvicorn tells only the newest request of a connection that
    it ended, so the fast path wrote the first batch's answer to a closed transport: a
    RuntimeError, logged by asyncio as an ERROR ("Task exception was never retrieved")."""
    proc, port, _ = agent
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post(batch("endA")) + post(batch("endB")) + GARBAGE)
        read_to_end(sock)
    proc.wait_line(r"friction stored .*auditID=endA-")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post(batch("after")))  # a later request is served: the loop went on
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    out = proc.output()
    assert "Task exception was never retrieved" not in out, out[-3000:]
    assert "RuntimeError" not in out, out[-3000:]


def test_a_bad_request_behind_batches_is_answered_after_them(
        agent: tuple[Agent, int, int]) -> None:
    """Answers go in the order of the requests: bytes that are no HTTP, pipelined behind
    two batches, are answered 400 after the batches' 200s, each answer counted once. Before,
    the 400 went out at once and the connection closed: a client read it as the answer to
    its first batch (stored, counted 200), and the second batch was stored unanswered."""
    proc, port, ops = agent
    before = codes(ops)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post(batch("orderA")) + post(batch("orderB")) + GARBAGE)
        answers = re.findall(rb"HTTP/1\.1 (\d{3}) ", read_to_end(sock))
    assert answers == [b"200", b"200", b"400"]
    after = codes(ops)
    assert after["200"] == before["200"] + 2
    assert after["400"] == before["400"] + 1
    proc.wait_line(r"connection from 127\.0\.0\.1:\d+ refused with 400: ")


def test_a_chunked_body_with_bad_chunks_counts_as_the_400_it_got(
        agent: tuple[Agent, int, int]) -> None:
    """A chunked body whose chunk encoding is broken is answered 400 by the HTTP parser;
    the request counts as that 400, not as 499 (client went away), which it was before:
    the app only learnt that the connection ended."""
    proc, port, ops = agent
    before = codes(ops)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n1\r\n[\r\nZZ\r\n")
        answers = re.findall(rb"HTTP/1\.1 (\d{3}) ", read_to_end(sock))
    assert answers == [b"400"]
    after = wait_for(lambda: (now := codes(ops))["400"] + now["499"]
                     > before["400"] + before["499"] and now, what="the request counted")
    assert (after["400"], after["499"]) == (before["400"] + 1, before["499"])
    proc.wait_line(r"connection from 127\.0\.0\.1:\d+ refused with 400: ")
