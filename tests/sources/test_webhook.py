"""The webhook app over real sockets: real uvicorn, real TLS (mTLS), real SQLite outbox.

The app runs in-process (a uvicorn server in a background thread, set up exactly as the
agent sets it up) so the tests can read this process's metrics and swap rules mid-stream;
tests/test_server.py drives the whole `serve` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from healert_webhook.auth import TokenAuth
from healert_webhook.outbox import Outbox
from healert_webhook.records import OutboxError

from support.events import batch_of_400, event_list, exec_event, noise_event, two_rules
from support.pki import (
    CLIENT_NAME,
    PKI,
    client_context,
)
from support.servers import sample, wait_for
from support.webhooks import JSON, TOKEN, Hook, expected_keys, make_pipeline, queued, webhook

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
        # the old real fixtures (2018-2023) are set aside, never sent: they would not count
        aside = {d.key for d in outbox.dead_letters()}
        assert aside and all(d.reason.startswith("expired") for d in outbox.dead_letters())
        # The apiserver resends a batch it thinks failed: stored once, counted as duplicates.
        again = c.post(hook.url, content=body, headers=JSON)
        assert again.status_code == 200
        assert len(queued(outbox)) == len(rows)
    assert sample("healert_webhook_requests_total", code="200") == ok_before + 2
    assert sample("healert_duplicates_suppressed_total", source="webhook") == \
        dup_before + len(rows) + len(aside)
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


# -- memory budget across requests -----------------------------------------------------


def test_bodies_beyond_the_memory_budget_wait_then_get_503(tmp_path: Path,
                                                           outbox: Outbox) -> None:
    import socket

    from healert_webhook import batches
    from healert_webhook.budget import BodyBudget

    body = event_list([noise_event(i) for i in range(3)])
    cost = batches.cost(body, batches.reading(body))
    busy_before = sample("healert_webhook_busy_total")
    with webhook(tmp_path, outbox, None, tokens=None) as hook:
        # room for one body being evaluated, not for a second one arriving meanwhile
        hook.app.budget = BodyBudget(cost + len(body) // 2, wait=0.3)
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


def test_a_large_candidate_gets_its_share_of_the_budget_before_it_is_parsed(
        tmp_path: Path, outbox: Outbox) -> None:
    from healert_webhook import batches
    from healert_webhook.budget import BodyBudget

    big = exec_event(1, tag="big")  # a person's exec carrying many small values
    big["requestObject"] = {"spec": [{"a": 1}] * (batches.SMALL_CANDIDATE // 4)}
    body = event_list([noise_event(2), big])
    plan, up_front = batches.plan(body)
    assert plan is not None
    need = batches.estimate(orjson.dumps(big))
    assert need > batches.candidate_reserve(plan)  # more than reserved for any candidate
    with webhook(tmp_path, outbox, None, tokens=None) as hook:
        held: list[int] = []
        take = hook.app.budget.take

        async def spy(size: int, *, holding: bool = False) -> bool:
            held.append(size)
            return await take(size, holding=holding)

        hook.app.budget.take = spy  # type: ignore[method-assign]
        with httpx.Client(timeout=30) as c:
            assert c.post(hook.url, content=body, headers=JSON).status_code == 200
        assert sum(held) >= up_front + need - batches.candidate_reserve(plan)
        wait_for(lambda: hook.app.budget.used == 0)
        assert len(queued(outbox)) == 1
        # ...and a budget that cannot hold it refuses the batch instead of parsing it
        more = need - batches.candidate_reserve(plan)
        hook.app.budget = BodyBudget(up_front + more // 2, wait=0.2)
        with httpx.Client(timeout=30) as c:
            refused = c.post(hook.url, content=body, headers=JSON)
        assert refused.status_code == 413
        assert "HEALERT_MAX_INFLIGHT_BYTES" in refused.json()["error"]


# -- which bodies are evaluated on the event loop -----------------------------------------


def test_typical_batches_stay_on_the_loop_and_many_candidates_go_to_a_thread(
        tmp_path: Path, outbox: Outbox) -> None:
    from healert_webhook.sources.webhook import ON_LOOP_EVENTS

    typical = event_list([noise_event(i) for i in range(390)]
                         + [exec_event(i, tag="typ", pad=2000) for i in range(10)])
    many = [exec_event(i, tag="many") for i in range(ON_LOOP_EVENTS + 1)]  # all match
    with webhook(tmp_path, outbox, None, tokens=None) as hook:
        threads: list[threading.Thread] = []
        evaluate = hook.app.pipeline.evaluate

        def where(*args: Any) -> Any:  # the real evaluation, noting the thread it ran on
            threads.append(threading.current_thread())
            return evaluate(*args)

        hook.app.pipeline.evaluate = where  # type: ignore[method-assign]
        with httpx.Client(timeout=30) as c:
            for body in (typical, event_list(many), typical, event_list(many[1:])):
                assert c.post(hook.url, content=body, headers=JSON).status_code == 200
        on_loop = [thread is hook.running.thread for thread in threads]
        # the body of one event too many: counted on the loop, evaluated on a thread
        assert on_loop == [True, True, False, True, True], on_loop
    assert len(queued(outbox)) == 10 + ON_LOOP_EVENTS + 1
