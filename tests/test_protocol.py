"""The agent's HTTP protocol hands request bodies over as they arrived, byte for byte,
and tells the connection gate which connections it may close to make room.

A real uvicorn server on loopback with the agent's protocol and gate; raw sockets as the
clients, so the pieces a body arrives in, pipelining, `Expect: 100-continue`, a client
that goes away mid-body, and the order connections arrive in and prove themselves are
what the test sends.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from healert_webhook import protocol as http_protocol

from support.servers import Running, serve_app, wait_for
from support.sockets import Proving, ask


class EchoDigest:
    """An ASGI app answering each POST with the SHA-256 of its body and how many
    messages it came in; disconnects are recorded."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.messages: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        count = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body = message.get("body", b"")
            assert isinstance(body, bytes)
            digest.update(body)
            count += 1
            if not message.get("more_body", False):
                break
        self.messages.append(count)
        answer = digest.hexdigest().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def echo() -> Iterator[tuple[Running, EchoDigest]]:
    app = EchoDigest()
    with serve_app(app) as running:
        yield running, app


def head(length: int, extra: bytes = b"") -> bytes:
    return (b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n" % (length, extra))


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """The bodies of `count` responses (each 64 hex digits)."""
    data = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(bodies)} answers"
        data += chunk
        while b"\r\n\r\n" in data and len(data) >= data.index(b"\r\n\r\n") + 4 + 64:
            end = data.index(b"\r\n\r\n") + 4
            assert data.startswith(b"HTTP/1.1 200"), data[:80]
            bodies.append(data[end:end + 64])
            data = data[end + 64:]
    return bodies


@pytest.mark.parametrize("piece", [1, 7, 4096, 300_000])
def test_a_body_sent_in_pieces_of_any_size_arrives_whole(
        echo: tuple[Running, EchoDigest], piece: int) -> None:
    running, app = echo
    body = os.urandom(1_500_000 if piece > 1 else 20_000)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(head(len(body)))
        for at in range(0, len(body), piece):
            sock.sendall(body[at:at + piece])
        assert read_answers(sock, 1) == [hashlib.sha256(body).hexdigest().encode()]
    if piece == 300_000:  # several pieces come in each message, not one message each
        assert app.messages[-1] < len(body) // piece * 4


def test_pipelined_requests_keep_their_own_bodies(echo: tuple[Running, EchoDigest]) -> None:
    running, _app = echo
    bodies = [os.urandom(n) for n in (10, 200_000, 0, 70_000, 5)]
    wire = b"".join(head(len(b)) + b for b in bodies)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(wire)
        assert read_answers(sock, len(bodies)) == [
            hashlib.sha256(b).hexdigest().encode() for b in bodies]


def test_expect_100_continue_is_answered_before_the_body(
        echo: tuple[Running, EchoDigest]) -> None:
    running, _app = echo
    body = os.urandom(1000)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(head(len(body), b"expect: 100-continue\r\n"))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert read_answers(sock, 1) == [hashlib.sha256(body).hexdigest().encode()]


def test_a_client_gone_mid_body_is_a_disconnect(echo: tuple[Running, EchoDigest]) -> None:
    running, app = echo
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(head(1_000_000) + b"x" * 100_000)
        time.sleep(0.2)
    wait_for(lambda: app.disconnects == 1, what="the app sees the disconnect")


# -- which connection a full listener closes ------------------------------------------------















class _QuickFirstHead(http_protocol.GuardedHttpProtocol):
    first_head_timeout = 0.5


def test_a_new_connection_must_show_a_whole_head_soon_whatever_it_trickles() -> None:
    with serve_app(Proving(), protocol=_QuickFirstHead, keep_alive=5.0) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            answer = b""
            for byte in b"GET /x HTTP/1.1\r\nhost: x\r\n":  # a byte every 0.1 s
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                sock.settimeout(0.1)
                try:
                    answer = sock.recv(1024)
                except TimeoutError:
                    continue
                break
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"within 0.5 s of connecting" in answer
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            assert ask(sock, auth=True).startswith(b"HTTP/1.1 200")
            time.sleep(1.0)  # past the first head's deadline: a later head has its own
            assert ask(sock).startswith(b"HTTP/1.1 200")
