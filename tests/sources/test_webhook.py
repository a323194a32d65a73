"""The webhook app over real sockets: real uvicorn, real TLS (mTLS), real SQLite outbox.

The app runs in-process (a uvicorn server in a background thread, set up exactly as the
agent sets it up) so the tests can read this process's metrics and swap rules mid-stream;
tests/test_server.py drives the whole `serve` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme

from healert_webhook import tls
from healert_webhook.auth import TokenAuth, TokenError, allow_list, parse_tokens
from healert_webhook.config import Settings, build_settings
from healert_webhook.detect import Detector, Stats
from healert_webhook.outbox import Outbox, OutboxError
from healert_webhook.pipeline import Pipeline
from healert_webhook.rules import parse_rules
from healert_webhook.sources.webhook import WebhookApp

from support.events import RULES, batch_of_400, event_list, exec_event, noise_event, two_rules
from support.pki import (
    CLIENT_NAME,
    PKI,
    client_context,
    handshake_error,
    make_pki,
    server_common_name,
)
from support.servers import Running, sample, serve_app, wait_for

JSON = {"content-type": "application/json"}
TOKEN = "s3cret-token-1"


def make_pipeline(tmp_path: Path, text: str = RULES, outbox: Outbox | None = None
                  ) -> Pipeline:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    return Pipeline.from_settings(Settings(rules_path=rules, state_dir=tmp_path / "state"),
                                  outbox)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.db")
    yield box
    box.close()


class Hook:
    """A running webhook and what the tests need to talk to it."""

    def __init__(self, running: Running, app: WebhookApp, ctx: ssl.SSLContext | None,
                 pki: PKI | None) -> None:
        self.running = running
        self.app = app
        self.ctx = ctx
        self.pki = pki
        self.port = running.port
        scheme = "https" if ctx is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/audit"

    def client(self, *, cert: Path | str | None = "default", token: str | None = TOKEN,
               **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if self.pki is None:
            return httpx.Client(headers=headers, timeout=60, **kwargs)
        pem = self.pki.client() if cert == "default" else cert
        ctx = client_context(self.pki, pem if isinstance(pem, Path) else None)
        return httpx.Client(verify=ctx, headers=headers, timeout=60, **kwargs)


@contextlib.contextmanager
def webhook(tmp_path: Path, outbox: Any, pki: PKI | None, *, names: tuple[str, ...] = (),
            tokens: TokenAuth | str | None = "default", pipeline: Pipeline | None = None,
            max_body: int = 64 * 1024 * 1024) -> Iterator[Hook]:
    if tokens == "default":
        token_file = tmp_path / "tokens"
        token_file.write_text(f"# webhook tokens\n{TOKEN}\n")
        tokens = TokenAuth(token_file, None)
    ctx = None
    if pki is not None:
        ctx = tls.build_server_context(pki.server_cert, pki.server_key, pki.ca_file)
    executor = ThreadPoolExecutor(2)
    if pipeline is None:
        pipeline = make_pipeline(tmp_path, outbox=outbox)
    else:
        pipeline.outbox = outbox
    app = WebhookApp(pipeline=pipeline, executor=executor, path="/audit", max_body_bytes=max_body,
                     tokens=tokens if isinstance(tokens, TokenAuth) else None,
                     client_names=allow_list(names))
    try:
        with serve_app(app, ctx) as running:
            yield Hook(running, app, ctx, pki)
    finally:
        executor.shutdown()


def queued(outbox: Outbox) -> list[Any]:
    return outbox.head(1_000_000)


def expected_keys(items: list[Any], text: str = RULES) -> set[str]:
    """The keys an independent Detector finds in `items` (the outbox must hold these)."""
    found = Detector(parse_rules(text)).detect(items, Stats())
    return {f.key for f in found}


# -- a full batch over mTLS ------------------------------------------------------------


def test_batch_of_400_over_mtls_is_detected_stored_and_deduplicated(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    items, people = batch_of_400()
    body = event_list(items)
    ok_before = sample("healert_webhook_requests_total", code="200")
    dup_before = sample("healert_duplicates_suppressed_total", source="webhook")
    invalid_before = sample("healert_invalid_events_total", source="webhook",
                            reason="missing_stage")
    with webhook(tmp_path, outbox, pki, names=(CLIENT_NAME,)) as hook, hook.client() as c:
        answer = c.post(hook.url + "?timeout=30s", content=body, headers=JSON)
        assert answer.status_code == 200
        assert answer.json() == {}
        rows = queued(outbox)
        keys = {row.key for row in rows}
        assert keys == expected_keys(items)
        mine = [r for r in rows if r.event["entity_ref"] == "component:payments/payments-api"]
        assert len(mine) == people  # every exec/port-forward by a person, WebSocket era too
        assert {r.rule for r in mine} == {"kubectl-exec", "port-forward"}
        # The apiserver resends a batch it thinks failed: stored once, counted as duplicates.
        again = c.post(hook.url, content=body, headers=JSON)
        assert again.status_code == 200
        assert len(queued(outbox)) == len(rows)
    assert sample("healert_webhook_requests_total", code="200") == ok_before + 2
    assert sample("healert_duplicates_suppressed_total", source="webhook") == \
        dup_before + len(rows)
    assert sample("healert_invalid_events_total", source="webhook",
                  reason="missing_stage") > invalid_before  # the fixture {"kind": 0}


def test_single_event_and_array_bodies_are_accepted(tmp_path: Path, outbox: Outbox) -> None:
    with webhook(tmp_path, outbox, None, tokens=None) as hook, hook.client(token=None) as c:
        assert c.post(hook.url, content=orjson.dumps(exec_event(1)), headers=JSON
                      ).status_code == 200
        assert c.post(hook.url, content=orjson.dumps([exec_event(2), noise_event(3)]),
                      headers={"content-type": "application/json; charset=utf-8"}
                      ).status_code == 200
    assert len(queued(outbox)) == 2


# -- authentication ------------------------------------------------------------------------


def test_no_client_certificate_is_refused_at_handshake_and_counted(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="no_client_cert")
    with webhook(tmp_path, outbox, pki) as hook:
        assert handshake_error(hook.port, client_context(pki)) is not None
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="no_client_cert") == before + 1, what="count")
        with hook.client(cert=None) as c, pytest.raises(httpx.TransportError):
            c.post(hook.url, content=event_list([exec_event(1)]), headers=JSON)
    assert queued(outbox) == []


def test_certificate_from_another_ca_is_refused_and_counted(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="untrusted_client_cert")
    stranger = pki.client(ca=trustme.CA())
    with webhook(tmp_path, outbox, pki) as hook:
        assert handshake_error(hook.port, client_context(pki, stranger)) is not None
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="untrusted_client_cert") == before + 1, what="count")


def test_client_name_outside_the_allow_list_gets_403(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="client_name")
    with webhook(tmp_path, outbox, pki, names=(CLIENT_NAME,)) as hook:
        with hook.client(cert=pki.client("someone-else")) as c:
            answer = c.post(hook.url, content=event_list([exec_event(1)]), headers=JSON)
        assert answer.status_code == 403
        assert "someone-else" in answer.json()["error"]
        with hook.client(cert=pki.client(CLIENT_NAME.upper())) as c:  # names ignore case
            assert c.post(hook.url, content=event_list([]), headers=JSON).status_code == 200
    assert sample("healert_webhook_auth_failures_total", reason="client_name") == before + 1
    assert queued(outbox) == []


def test_tokens_wrong_missing_and_rotation(tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("old-token\n\n# next one\nnew-token\n")
    auth = TokenAuth(token_file, "env-token")
    bad = sample("healert_webhook_auth_failures_total", reason="bad_token")
    missing = sample("healert_webhook_auth_failures_total", reason="missing_token")
    body = event_list([exec_event(1)])
    with webhook(tmp_path, outbox, pki, tokens=auth) as hook:
        for token, code in (("wrong", 401), (None, 401), ("old-token", 200),
                            ("new-token", 200), ("env-token", 200), ("# next one", 401)):
            with hook.client(token=token) as c:
                answer = c.post(hook.url, content=body, headers=JSON)
            assert answer.status_code == code, token
            if code == 401:
                assert answer.headers["www-authenticate"] == "Bearer"
        # Rotation: the old token leaves the file; the change is picked up without restart.
        token_file.write_text("new-token\n")
        assert auth.reload() is True
        with hook.client(token="old-token") as c:
            assert c.post(hook.url, content=body, headers=JSON).status_code == 401
        with hook.client(token="new-token") as c:
            assert c.post(hook.url, content=body, headers=JSON).status_code == 200
    assert sample("healert_webhook_auth_failures_total", reason="bad_token") == bad + 3
    assert sample("healert_webhook_auth_failures_total", reason="missing_token") == missing + 1


def test_token_file_problems() -> None:
    assert parse_tokens(" a \n#c\n\n b\n") == [b"a", b"b"]
    with pytest.raises(TokenError, match="holds no token"):
        TokenAuth(Path("/dev/null"), None)
    with pytest.raises(TokenError, match="No such file"):
        TokenAuth(Path("/nonexistent/tokens"), None)
    assert TokenAuth.from_settings(build_settings(environ={})) is None
    auth = TokenAuth.from_settings(build_settings(environ={"HEALERT_WEBHOOK_TOKEN": "t"}))
    assert auth is not None and auth.check(b"Bearer t") is None
    assert auth.check(b"Basic t") == "missing_token"


def test_token_file_emptied_keeps_the_previous_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("t1\n")
    auth = TokenAuth(token_file, None)
    token_file.write_text("")
    assert auth.reload() is False
    assert auth.check(b"Bearer t1") is None


def test_tls_below_1_2_is_refused(tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="tls_version")
    with webhook(tmp_path, outbox, pki) as hook:
        old = client_context(pki, pki.client(), maximum=ssl.TLSVersion.TLSv1_1)
        assert handshake_error(hook.port, old) is not None
        # the server saw the old ClientHello and refused it (not just the client giving up)
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="tls_version") == before + 1, what="count")
        modern = client_context(pki, pki.client())
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        assert handshake_error(hook.port, modern) is None  # 1.2 itself is fine


# -- every status code -----------------------------------------------------------------------


def test_status_codes(tmp_path: Path, outbox: Outbox) -> None:
    bad_json = sample("healert_invalid_events_total", source="webhook", reason="bad_json")
    bad_shape = sample("healert_invalid_events_total", source="webhook", reason="bad_shape")
    with webhook(tmp_path, outbox, None, max_body=1000) as hook, hook.client() as c:
        answer = c.get(hook.url)
        assert answer.status_code == 405
        assert answer.headers["allow"] == "POST"
        assert c.post(hook.url, content=b"{}", headers={"content-type": "text/plain"}
                      ).status_code == 415
        assert c.post(hook.url, content=b"{}").status_code == 415  # no content type
        assert c.post(hook.url.replace("/audit", "/other"), content=b"{}", headers=JSON
                      ).status_code == 404
        answer = c.post(hook.url, content=b"x" * 1001, headers=JSON)
        assert answer.status_code == 413
        answer = c.post(hook.url, content=b'{"items": [', headers=JSON)
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("body is not valid JSON")
        answer = c.post(hook.url, content=b'"an audit event"', headers=JSON)
        assert answer.status_code == 400
        assert "EventList" in answer.json()["error"]
        answer = c.post(hook.url, content=b'{"kind": "EventList", "items": 5}', headers=JSON)
        assert answer.status_code == 400
        # bad items inside a good batch are skipped, the rest is processed
        answer = c.post(hook.url, content=event_list([5, {"stage": 1}, exec_event(1)]),
                        headers=JSON)
        assert answer.status_code == 200
        assert c.post(hook.url + "?timeout=30s", content=b"[]", headers=JSON
                      ).status_code == 200
    assert len(queued(outbox)) == 1
    assert sample("healert_invalid_events_total", source="webhook", reason="bad_json") == \
        bad_json + 1
    assert sample("healert_invalid_events_total", source="webhook", reason="bad_shape") == \
        bad_shape + 2


def test_413_without_content_length_stops_reading(tmp_path: Path, outbox: Outbox) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"items": ['
        for _ in range(10_000):  # 640 MB if the server read it all
            sent += 65536
            yield b" " * 65536

    with webhook(tmp_path, outbox, None, max_body=1 << 20) as hook, hook.client() as c:
        try:
            answer = c.post(hook.url, content=chunks(), headers=JSON)
        except httpx.TransportError:
            answer = None  # the server closed while we were still sending: also a refusal
        if answer is not None:
            assert answer.status_code == 413
            assert "transfer-encoding" not in answer.headers
        assert sent < 200 * 65536  # the server stopped us long before the end
        wait_for(lambda: sample("healert_webhook_requests_total", code="413") > 0, what="413")
    assert queued(outbox) == []


class FailingOutbox(Outbox):
    """The real outbox whose store fails like a full disk would.

    A mock only because a failing SQLite write cannot be produced on demand here (the
    tests run as root, so permissions do not stop writes).
    """

    def store(self, frictions: Any, checkpoint: Any = None) -> Any:
        raise OutboxError("database or disk is full", "full")


def test_store_failure_answers_503_with_retry_after(tmp_path: Path) -> None:
    box = FailingOutbox(tmp_path / "state" / "outbox.db")
    try:
        with webhook(tmp_path, box, None) as hook, hook.client() as c:
            answer = c.post(hook.url, content=event_list([exec_event(1)]), headers=JSON)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "5"
            # a batch without friction events needs no store and is still accepted
            assert c.post(hook.url, content=event_list([noise_event(1)]), headers=JSON
                          ).status_code == 200
        assert Outbox.head(box, 10) == []
    finally:
        box.close()


# -- size and concurrency ------------------------------------------------------------------


def test_batch_of_40_mib(tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    items = [exec_event(i, pad=100_000) for i in range(420)]
    body = event_list(items)
    assert len(body) > 40 * 1024 * 1024
    with webhook(tmp_path, outbox, pki) as hook, hook.client() as c:
        answer = c.post(hook.url, content=body, headers=JSON)
    assert answer.status_code == 200
    assert len(queued(outbox)) == 420


def test_fifty_concurrent_clients(tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    clients, batches = 50, 4

    async def one(hook: Hook, n: int) -> list[int]:
        ctx = client_context(pki, pki.client())
        codes = []
        async with httpx.AsyncClient(verify=ctx, timeout=120,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as c:
            for b in range(batches):
                items = [exec_event(n * 1000 + b * 10 + i, tag=f"c{n}") for i in range(10)]
                items += [noise_event(i) for i in range(90)]
                answer = await c.post(hook.url, content=event_list(items), headers=JSON)
                codes.append(answer.status_code)
        return codes

    async def all_of(hook: Hook) -> list[list[int]]:
        return await asyncio.gather(*(one(hook, n) for n in range(clients)))

    with webhook(tmp_path, outbox, pki) as hook:
        results = asyncio.run(all_of(hook))
    assert all(code == 200 for codes in results for code in codes)
    assert len(queued(outbox)) == clients * batches * 10


# -- reloads ----------------------------------------------------------------------------------


def test_rules_reload_mid_stream_never_half_applied(tmp_path: Path, outbox: Outbox) -> None:
    """Every batch is evaluated by one whole rule set: both rules of A, or both of B."""
    pipeline = make_pipeline(tmp_path, two_rules("aa"))
    rules = tmp_path / "rules.yaml"
    stop = threading.Event()
    reloads = 0

    def swap() -> None:
        nonlocal reloads
        while not stop.is_set():
            rules.write_text(two_rules("bb" if reloads % 2 == 0 else "aa"))
            assert pipeline.reload()
            reloads += 1

    swapper = threading.Thread(target=swap)
    batches = 60
    with webhook(tmp_path, outbox, None, pipeline=pipeline) as hook, hook.client() as c:
        swapper.start()
        try:
            for b in range(batches):
                items = [exec_event(b * 100 + i, tag=f"b{b}") for i in range(50)]
                items += [noise_event(i) for i in range(50)]
                assert c.post(hook.url, content=event_list(items), headers=JSON
                              ).status_code == 200
        finally:
            stop.set()
            swapper.join()
    assert reloads > 2
    rows = queued(outbox)
    assert len(rows) == batches * 50 * 2  # no event went through without rules
    sets_per_batch: dict[int, set[str]] = {}
    for row in rows:
        seq_batch = (row.seq - 1) // 100  # stores are one transaction per batch, in order
        sets_per_batch.setdefault(seq_batch, set()).add(row.rule)
    assert all(s in ({"aa-one", "aa-two"}, {"bb-one", "bb-two"})
               for s in sets_per_batch.values())
    assert {"aa-one", "bb-one"} <= {row.rule for row in rows}  # both sets were used


def test_certificate_rotation_reaches_new_connections(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    with webhook(tmp_path, outbox, pki) as hook:
        assert hook.ctx is not None
        ctx = client_context(pki, pki.client())
        assert server_common_name(hook.port, ctx) == "healert-webhook-1"
        reloader = tls.CertReloader(hook.ctx, pki.server_cert, pki.server_key)
        assert reloader.pending() is False  # nothing changed yet
        with hook.client() as kept:  # a connection opened before the rotation
            assert kept.post(hook.url, content=b"[]", headers=JSON).status_code == 200
            pki.reissue_server("healert-webhook-2")
            assert reloader.pending() is True
            assert reloader.apply() is True
            assert server_common_name(hook.port, ctx) == "healert-webhook-2"
            assert kept.post(hook.url, content=b"[]", headers=JSON).status_code == 200


def test_half_written_certificate_pair_is_not_loaded(tmp_path: Path, pki: PKI) -> None:
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    reloader = tls.CertReloader(ctx, pki.server_cert, pki.server_key)
    old_key = pki.server_key.read_bytes()
    pki.reissue_server("healert-webhook-2")
    pki.server_key.write_bytes(old_key)  # the new certificate arrived, its key not yet
    assert reloader.pending() is False
    pki.reissue_server("healert-webhook-3")
    assert reloader.pending() is True


def test_bad_tls_files_give_a_clear_error(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(tls.TLSConfigError, match="HEALERT_TLS_CERT"):
        tls.build_server_context(pki.server_cert, pki.ca_file, None)
    with pytest.raises(tls.TLSConfigError, match="HEALERT_TLS_CLIENT_CA"):
        tls.build_server_context(pki.server_cert, pki.server_key, tmp_path / "missing")


# -- memory budget across requests -----------------------------------------------------


def test_bodies_beyond_the_memory_budget_wait_then_get_503(tmp_path: Path,
                                                           outbox: Outbox) -> None:
    import socket

    from healert_webhook.budget import BodyBudget

    body = event_list([noise_event(i) for i in range(3)])
    busy_before = sample("healert_webhook_busy_total")
    with webhook(tmp_path, outbox, None, tokens=None) as hook:
        hook.app.budget = BodyBudget(len(body) + len(body) // 2, wait=0.3)
        head = (b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body))
        with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as slow:
            slow.sendall(head + body[:10])  # holds its reservation while it trickles
            wait_for(lambda: hook.app.budget.used == len(body))
            with httpx.Client(timeout=10) as c:
                refused = c.post(hook.url, content=body, headers=JSON)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            slow.sendall(body[10:])
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
        wait_for(lambda: hook.app.budget.used == 0)
        with httpx.Client(timeout=10) as c:  # the budget is free again
            assert c.post(hook.url, content=body, headers=JSON).status_code == 200
    assert sample("healert_webhook_busy_total") == busy_before + 1
