"""The webhook's receive path (protocol.py, sources/webhook.py) against pipelining clients
whose later requests are bad, on the real agent.

The real `serve` process on loopback (plain HTTP, no authentication, so the fast path
serves well-formed batches), raw sockets so the test decides how bytes arrive; counts read
from its /metrics, errors from its log.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from support.agent import Agent, metric, serve_args
from support.events import exec_event
from support.servers import wait_for

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
