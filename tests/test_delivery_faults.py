"""Faults between an acknowledged batch and the backend: a gateway that loses the
backend's answer after the event was stored, and an outbox `-wal` file deleted under the
agent. Against the real test backend process and real SQLite files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_forward import KEY, forwarding, friction, make_settings, numbers, sample, wait_for

from healert_webhook.outbox import Outbox
from healert_webhook.records import OutboxError

from support.backend import Backend, run_backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with run_backend(tmp_path, api_key=KEY, limit=10_000, window=60.0) as server:
        yield server


@contextmanager
def gateway(upstream: str, read_timeout: float) -> Iterator[str]:
    """A reverse proxy on loopback in front of the backend, as an ingress runs one: it
    passes each request on and relays the answer, and answers 504 Gateway Timeout when
    the backend takes longer than `read_timeout` (nginx's proxy_read_timeout). A real
    HTTP hop, not a mock: nginx itself is not installed on the test machines."""
    client = httpx.Client(timeout=httpx.Timeout(read_timeout, connect=2.0))

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization")}
            try:
                answer = client.request(self.command, upstream + self.path, content=body,
                                        headers=headers)
                status, content = answer.status_code, answer.content
                kind = answer.headers.get("content-type", "application/json")
            except httpx.TimeoutException:
                status, content, kind = 504, b"<html>504 Gateway Time-out</html>", "text/html"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _relay

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        client.close()
        thread.join(5)


class _At:
    """A backend seen through the gateway: the forwarder's settings only read `url`."""

    def __init__(self, url: str) -> None:
        self.url = url


def test_a_gateway_timeout_after_the_backend_stored_the_event_sends_it_once(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    # The backend stores the event, then takes 1.5 s to answer; the ingress in front of
    # it gives up after 0.3 s and answers 504. The request reached the backend: a blind
    # resend is a duplicate, which raises the service's score for nothing.
    backend.control(latency_after=1.5)
    with gateway(backend.url, read_timeout=0.3) as url:
        settings = make_settings(tmp_path, _At(url), forward_timeout=1.0)  # type: ignore[arg-type]
        outbox.store([friction(1)])
        with forwarding(settings, outbox):
            wait_for(lambda: len(backend.accepted()) >= 1, 15,
                     "the first send reached the backend")
            wait_for(lambda: outbox.stats().depth == 0 or len(backend.accepted()) >= 2, 20,
                     "settled or sent again")
            backend.control(latency_after=0.0)
            wait_for(lambda: outbox.stats().depth == 0, 20, "settled")
    assert numbers(backend.accepted()) == [1]
    assert sample("healert_forward_reconciled_total", {"result": "delivered"}) >= 1


def test_a_deleted_wal_file_makes_the_outbox_refuse_stores(tmp_path: Path) -> None:
    # The outbox's commits live in `<db>-wal` until a checkpoint copies them over. With
    # that file deleted while the agent runs, every later commit goes to a file nobody
    # can open again: a kill -9 then loses each batch answered 200 since (measured: the
    # whole outbox, schema included, was gone). As when the database itself is moved, a
    # store must be refused (503: the apiserver keeps the batch) and readiness say why.
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path)
    try:
        box.store([friction(1)])
        wal = Path(f"{path}-wal")
        assert wal.exists()
        wal.unlink()
        with pytest.raises(OutboxError, match="moved, deleted or replaced"):
            box.store([friction(2)])
        assert box.resent([friction(1)]) is None  # not answered from memory either
        assert "restart the agent" in (box.writable() or "")
    finally:
        box.close()
    # a clean stop checkpoints what the open WAL held: nothing acknowledged is lost
    again = Outbox(path)
    try:
        assert [row.key for row in again.head(10)] == [friction(1).key]
        again.store([friction(2)])  # the reopened outbox takes writes again
    finally:
        again.close()
