"""The webhook's fast receive path (protocol.py, `WebhookApp.begin`) over real sockets.

The apiserver's requests, a POST to the path with a Content-Length, skip the ASGI cycle:
the tests count the app's ASGI calls (a subclass of the real app that counts `__call__`,
nothing replaced) to show which way a request went, and send raw bytes so the pieces a
body comes in, pipelining, keep-alive, a client that stops or goes away mid-body are what
the test sends. Real uvicorn, the agent's protocol and gate, a real SQLite outbox.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from healert_webhook.budget import BodyBudget
from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox
from healert_webhook.sources.webhook import WebhookApp

from support.events import event_list, exec_event, noise_event
from support.servers import Running, sample, serve_app, wait_for
from support.webhooks import make_pipeline, queued


class CountingApp(WebhookApp):
    """The real webhook app, counting the requests that came the ASGI way."""

    asgi_calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Count, then serve as the app does."""
        if scope["type"] == "http":
            self.asgi_calls += 1
        await super().__call__(scope, receive, send)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Running, CountingApp, Outbox]]:
    outbox = Outbox(tmp_path / "outbox.db")
    pool = ThreadPoolExecutor(2)
    settings = Settings(webhook_path="/audit", webhook_body_timeout=1.0)
    app = CountingApp(settings, make_pipeline(tmp_path, outbox=outbox), pool,
                      budget=BodyBudget(40 * 1024 * 1024, wait=0.5))
    try:
        with serve_app(app) as running:
            yield running, app, outbox
    finally:
        pool.shutdown()
        outbox.close()


def head(length: int, path: bytes = b"/audit", version: bytes = b"1.1",
         extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/%s\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n" % (path, version, length, extra))


def answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes, bytes]]:
    """Read `count` answers: (status line, head, body), by their Content-Length."""
    data = b""
    found = []
    while len(found) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            top = data[:end].decode().lower()
            length = int(top.split("content-length: ")[1].split("\r\n")[0])
            if len(data) >= end + 4 + length:
                found.append((data[:data.find(b"\r\n")], data[:end],
                              data[end + 4:end + 4 + length]))
                data = data[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(found)} answers"
        data += chunk
    return found


def requests_total(code: str) -> float:
    return sample("healert_webhook_requests_total", code=code)


def test_apiserver_requests_skip_the_asgi_cycle_and_are_stored(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    """Pieces of any size, keep-alive and pipelining: every batch whole, in order."""
    running, app, outbox = served
    bodies = [event_list([exec_event(i, tag=f"fast{i}"), noise_event(i)]) for i in range(4)]
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        first = head(len(bodies[0])) + bodies[0]
        for i in range(0, len(first), 7):  # a byte stream in small pieces
            sock.sendall(first[i:i + 7])
            time.sleep(0.001)
        assert answers(sock, 1)[0][2] == b"{}"
        sock.sendall(b"".join(head(len(b)) + b for b in bodies[1:]))  # pipelined
        got = answers(sock, 3)
    assert [body for _, _, body in got] == [b"{}"] * 3
    assert all(line == b"HTTP/1.1 200 OK" for line, _, _ in got)
    assert app.asgi_calls == 0
    assert len(queued(outbox)) == 4
    wait_for(lambda: app.budget.used == 0, what="the budget is free again")


def test_other_requests_still_take_the_asgi_way(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    running, app, _ = served
    body = event_list([noise_event(1)])
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(head(len(body), path=b"/other") + body)
        assert answers(sock, 1)[0][0] == b"HTTP/1.1 404 Not Found"
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                     % (len(body), body))
        assert answers(sock, 1)[0][0] == b"HTTP/1.1 200 OK"
    assert app.asgi_calls == 2


def test_http_1_0_is_answered_and_closed(served: tuple[Running, CountingApp, Outbox]) -> None:
    running, app, _ = served
    body = event_list([noise_event(1)])
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(head(len(body), version=b"1.0") + body)
        line, top, _ = answers(sock, 1)[0]
        assert line == b"HTTP/1.1 200 OK" and b"connection: close" in top
        assert sock.recv(10) == b""
    assert app.asgi_calls == 0


def test_a_body_too_slow_gets_408_and_the_budget_back(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    running, app, _ = served
    before = requests_total("408")
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(head(500_000) + b'{"items": [')
        wait_for(lambda: app.budget.used == 500_000, what="the reservation")
        line, top, body = answers(sock, 1)[0]
        assert line == b"HTTP/1.1 408 Request Timeout"
        assert b"connection: close" in top
        assert orjson.loads(body) == {"error": "body not received within 1 s"}
        assert sock.recv(10) == b""
    wait_for(lambda: app.budget.used == 0, what="the budget is free again")
    assert requests_total("408") == before + 1
    assert app.asgi_calls == 0


def test_a_client_gone_mid_body_is_counted_and_gives_the_budget_back(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    running, app, _ = served
    before = requests_total("499")
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(head(500_000) + b'{"items": [')
        wait_for(lambda: app.budget.used == 500_000, what="the reservation")
    wait_for(lambda: requests_total("499") == before + 1, what="the disconnect counted")
    wait_for(lambda: app.budget.used == 0, what="the budget is free again")
    assert app.asgi_calls == 0


def test_no_buffer_before_the_budget_holds_the_body(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    """A body that does not fit the budget now waits for it, then gets 503: its bytes
    are never gathered into a buffer meanwhile (reading pauses at the high-water mark)."""
    running, app, _ = served
    size = 36 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as holder, \
            socket.create_connection(("127.0.0.1", running.port), timeout=10) as late:
        holder.sendall(head(size) + b"[")
        wait_for(lambda: app.budget.used == size, what="the first reservation")
        late.sendall(head(size))
        late.settimeout(0.05)
        sent = 0
        chunk = b" " * 65536
        deadline = time.monotonic() + 0.3  # within the budget's wait of 0.5 s
        while time.monotonic() < deadline:
            try:
                sent += late.send(chunk)
            except TimeoutError:
                continue
        late.settimeout(10)
        assert sent < size  # the agent stopped reading: the kernel's buffers filled up
        line, top, _ = answers(late, 1)[0]
        assert line == b"HTTP/1.1 503 Service Unavailable"
        assert b"retry-after: 1" in top
    wait_for(lambda: app.budget.used == 0, what="the budget is free again")


def test_bodies_read_straight_into_reused_buffers_arrive_whole(
        served: tuple[Running, CountingApp, Outbox]) -> None:
    """Bodies larger than what comes with their head, one connection: each is read into a
    buffer of its size (a reused one, shrunk or grown) and evaluated whole."""
    running, app, outbox = served
    bodies = [event_list([exec_event(i, tag=f"big{i}")] + [noise_event(j) for j in range(n)])
              for i, n in enumerate((600, 300, 1000, 1000))]
    assert all(len(body) > 100_000 for body in bodies)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        for body in bodies:
            request = head(len(body)) + body
            for i in range(0, len(request), 40_000):
                sock.sendall(request[i:i + 40_000])
            assert answers(sock, 1)[0][2] == b"{}"
    assert app.asgi_calls == 0
    assert len(queued(outbox)) == len(bodies)
    wait_for(lambda: app.budget.used == 0, what="the budget is free again")
