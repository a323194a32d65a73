"""Hostile input to the webhook: the real `serve` process with its default limits (64 MiB
body, 64 MiB of bodies in memory), a steady good client alongside, memory read from /proc.

Stated bounds (README, "Reliability"): the agent's peak RSS (VmHWM) stays under
PEAK_BOUND_MIB through every case of this module, including a 50 MiB string field and
several large bodies at once, and falls back under SETTLED_BOUND_MIB afterwards; garbage,
idle and slow connections add less than SMALL_GROWTH_MIB. Every batch of the steady client
is answered 200 and stored.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healert_webhook import protocol
from healert_webhook.batches import GROUP_BYTES
from healert_webhook.budget import BodyBudget
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline
from healert_webhook.sources.webhook import WebhookApp

from support.agent import JSON, Agent, MiB, Steady, metric, serve_args
from support.events import event_list, exec_event, smuggling_event
from support.pki import PKI, client_context, make_pki
from support.servers import serve_app, wait_for
from support.workload import Generator

PEAK_BOUND_MIB = 450  # the default budget is 64 MiB; parsing takes up to ~5x a body
SETTLED_BOUND_MIB = 200
SMALL_GROWTH_MIB = 60


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, str, int]]:
    """One plain-HTTP agent on loopback shared by the module (the peak is module-wide)."""
    cwd = tmp_path_factory.mktemp("hostile")
    agent = Agent(serve_args(), cwd)
    try:
        port, ops = agent.ports()
        yield agent, f"http://127.0.0.1:{port}/audit", ops
        assert agent.alive(), agent.output()[-3000:]
        peak = agent.memory()["VmHWM"]
        assert peak < PEAK_BOUND_MIB, f"peak RSS {peak} MiB"
        assert agent.stop() == 0
    finally:
        agent.kill()


def stored_keys(cwd: Path) -> int:
    box = Outbox(cwd / "state" / "outbox.db")
    try:
        return box.stats().depth
    finally:
        box.close()


def post_raw(port: int, head: bytes, body: bytes, timeout: float = 30) -> bytes:
    """Send one request over a fresh socket and return the status line ('' if closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # answered and closed before all of it went: the answer is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return data.split(b"\r\n", 1)[0]


def head_for(length: int | None, extra: bytes = b"") -> bytes:
    size = b"content-length: %d\r\n" % length if length is not None else b""
    return (b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + size + extra + b"\r\n")


def real_batch(events: int) -> bytes:
    """A real EventList from the workload generator (system traffic and some bypasses)."""
    work = Generator(seed=11, match_ratio=0.2, object_kib=(0.5, 2.0)).take(events)
    return next(work.batches(events))


# -- garbage -----------------------------------------------------------------------------

def test_garbage_truncations_nesting_and_bad_utf8(hostile: tuple[Agent, str, int],
                                                  long_run: bool) -> None:
    agent, url, ops = hostile
    port = int(url.split(":")[2].split("/")[0])
    rng = random.Random(7)
    batch = real_batch(12)
    offsets = list(range(len(batch))) if long_run else sorted(rng.sample(range(len(batch)), 300))
    before = agent.memory()["VmRSS"]
    codes: Counter[int] = Counter()
    with Steady(url) as steady, httpx.Client(timeout=60) as client:
        def post(body: bytes) -> int:
            code = client.post(url, content=body, headers=JSON).status_code
            codes[code] += 1
            return code

        for _ in range(2000 if long_run else 60):
            assert post(os.urandom(rng.randint(0, 65536))) == 400
        for cut in offsets:  # a real batch cut at every (or a sample of) offset(s)
            assert post(batch[:cut]) == 400, cut
        assert post(batch) == 200
        assert post(b"[" * 100_000 + b"]" * 100_000) == 400  # depth limit, not recursion
        assert post(b'{"items": ' * 100_000) == 400
        bad_utf8 = orjson.dumps([exec_event(1, tag="utf")]).replace(b"alice", b"al\xff\xfece")
        assert post(bad_utf8) == 400
        assert post(b"\xef\xbb\xbf" + orjson.dumps([exec_event(1, tag="bom")])) == 400
        dup = (b'[{"auditID":"d-1","auditID":"d-2","stage":"ResponseComplete",'
               b'"verb":"get","verb":"create","user":{"username":"eve"},'
               b'"objectRef":{"resource":"pods","subresource":"exec","namespace":"a",'
               b'"name":"p"},"requestReceivedTimestamp":"2026-11-26T10:00:00Z"}]')
        assert post(dup) == 200  # orjson keeps the last value: detected once, as a create
        for cut in (1, len(batch) // 2, len(batch) - 1):  # the client leaves mid-body
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head_for(len(batch)) + batch[:cut])
    steady.check()
    wait_for(lambda: metric(ops, "healert_webhook_requests_total", code="499") >= 3,
             what="three requests counted as abandoned")
    assert metric(ops, "healert_invalid_events_total", source="webhook", reason="bad_json") \
        >= codes[400]
    assert agent.memory()["VmRSS"] - before < SMALL_GROWTH_MIB
    print(f"garbage: {sum(codes.values())} requests {dict(codes)}, "
          f"{len(offsets)} truncation offsets of a {len(batch)}-byte batch, "
          f"steady {len(steady.codes)} x 200, memory {agent.memory()}")


# hypothesis settings are fixed at import: --long is read from the command line here
EXAMPLES = 3000 if "--long" in sys.argv else 120


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wrong_types_in_every_field_never_fail_the_batch(
        wrong_type_server: tuple[str, Outbox], data: st.DataObject) -> None:
    """Any field of a real exec event replaced by a number, null, bool, list, object or
    string: the batch is answered 200 and the good event next to it is stored. (NaN and
    Infinity are not JSON: a body holding them is answered 400, as it should be.)"""
    url, outbox = wrong_type_server
    event = exec_event(data.draw(st.integers(0, 10**6)), tag="h")
    paths = list(_paths(event))
    path = data.draw(st.sampled_from(paths))
    value = data.draw(st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                             st.integers(), max_size=2),
        st.text(max_size=20)))
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    marker = exec_event(next(_MARKERS), tag="good", user="bob@example.com")
    before = outbox.stats().depth
    with httpx.Client(timeout=30) as client:
        answer = client.post(url, content=json.dumps([event, marker]), headers=JSON)
    assert answer.status_code == 200, (path, value, answer.text)
    assert outbox.stats().depth >= before + 1  # the good event beside it was stored


_MARKERS = itertools.count()


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


@pytest.fixture(scope="module")
def wrong_type_server(tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[tuple[str, Outbox]]:
    """The webhook app in process (uvloop, httptools) with a real outbox; hypothesis
    needs hundreds of requests, a subprocess per example would be the slow part."""
    from concurrent.futures import ThreadPoolExecutor

    from healert_webhook.config import Settings

    tmp = tmp_path_factory.mktemp("types")
    outbox = Outbox(tmp / "outbox.db")
    pool = ThreadPoolExecutor(2)
    app = WebhookApp(Settings(), Pipeline.from_settings(Settings(), outbox), pool)
    with serve_app(app, protocol=protocol.GuardedHttpProtocol) as local:
        yield f"http://127.0.0.1:{local.port}/audit", outbox
    pool.shutdown()
    outbox.close()


# -- size --------------------------------------------------------------------------------

def test_huge_bodies_are_refused_or_bounded(hostile: tuple[Agent, str, int]) -> None:
    agent, url, ops = hostile
    port = int(url.split(":")[2].split("/")[0])
    with Steady(url) as steady, httpx.Client(timeout=120) as client:
        big = exec_event(5, tag="big")
        big["userAgent"] = "k" * (50 * MiB)  # a 50 MiB string field in a real event
        assert client.post(url, content=orjson.dumps([big]), headers=JSON).status_code == 200
        assert agent.memory()["VmHWM"] < PEAK_BOUND_MIB
        # 100 MiB declared: refused before a byte of the body is read, connection closed
        status = post_raw(port, head_for(100 * MiB), b"x" * MiB)
        assert status.startswith(b"HTTP/1.1 413"), status

        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield b" " * MiB

        try:  # 100 MiB without Content-Length: refused once past 64 MiB
            code = client.post(url, content=chunks(), headers=JSON).status_code
        except httpx.HTTPError:  # the server may close while the client still sends
            code = 413
        assert code == 413
        # four 40 MiB bodies at once (160 MiB) against the 64 MiB budget: the budget
        # decides who waits; refused ones get 503 + Retry-After, none is lost half-stored
        body = orjson.dumps([exec_event(9, tag="many", pad=40 * MiB)])
        answers: list[int] = []

        def send() -> None:
            with httpx.Client(timeout=120) as c:
                answers.append(c.post(url, content=body, headers=JSON).status_code)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(set(answers)) in ([200], [200, 503]), answers
        assert answers.count(200) >= 1
    steady.check()
    peak = agent.memory()["VmHWM"]
    assert peak < PEAK_BOUND_MIB, peak
    wait_for(lambda: agent.memory()["VmRSS"] < SETTLED_BOUND_MIB, timeout=30,
             what="memory given back")
    assert metric(ops, "healert_webhook_requests_total", code="413") >= 2
    print(f"huge: 4 x 40 MiB at once answered {sorted(answers)}, peak {peak} MiB, "
          f"settled {agent.memory()['VmRSS']} MiB")


# -- slow and idle clients ---------------------------------------------------------------

def test_slow_idle_and_oversized_heads_do_not_starve_others(
        hostile: tuple[Agent, str, int]) -> None:
    agent, url, ops = hostile
    port = int(url.split(":")[2].split("/")[0])
    before = agent.memory()["VmRSS"]
    body = orjson.dumps([exec_event(3, tag="slow")])
    socks: list[socket.socket] = []
    try:
        with Steady(url) as steady:
            slow = []
            for _ in range(20):  # a body at one byte per 0.2 s
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(head_for(len(body)))
                slow.append(sock)
            for _ in range(10):  # half a request head, then nothing
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"POST /audit HTTP/1.1\r\nhost: x\r\ncontent-")
                socks.append(sock)
            refused = metric(ops, "healert_connections_refused_total", listener="webhook")
            for _ in range(500):  # connect and never send a byte: past the cap, closed
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            for i in range(15):
                for sock in slow:
                    sock.sendall(body[i:i + 1])
                time.sleep(0.2)
            # one header of 2 MiB: refused at 64 KiB, nothing buffered past that
            status = post_raw(port, b"POST /audit HTTP/1.1\r\nx-pad: " + b"a" * 2 * MiB, b"")
            assert status.startswith(b"HTTP/1.1 431"), status
            for sock in slow:  # the slow clients finish and are answered normally
                sock.sendall(body[15:])
            for sock in slow:
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
                sock.close()
            growth = agent.memory()["VmRSS"] - before
            # 1 steady + 30 slow or half + 500 silent against a cap of 512 open connections
            wait_for(lambda: metric(ops, "healert_connections_refused_total",
                                    listener="webhook") - refused >= 500 + 31 - 512,
                     what="connections over the cap refused")
        steady.check(minimum=10)
    finally:
        for sock in socks:
            sock.close()
    assert growth < SMALL_GROWTH_MIB, growth
    assert metric(ops, "healert_webhook_requests_total", code="431") >= 1
    print(f"slow/idle: 500 idle + 20 slow + 10 half-head connections, RSS growth {growth} "
          f"MiB, steady {len(steady.codes)} x 200")


def test_stalled_tls_handshakes_do_not_block_others(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    agent = Agent(serve_args("state", "--tls-cert", str(pki.server_cert),
                             "--tls-key", str(pki.server_key)), tmp_path)
    socks: list[socket.socket] = []
    try:
        port, _ops = agent.ports()
        url = f"https://127.0.0.1:{port}/audit"
        hello = _client_hello(pki)
        with Steady(url, client_kwargs={"verify": client_context(pki)}) as steady:
            for i in range(200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2:
                    sock.sendall(hello[: len(hello) // 2])  # half a ClientHello
                socks.append(sock)
            time.sleep(1.0)  # the steady client keeps posting meanwhile
            with httpx.Client(verify=client_context(pki), timeout=30) as fresh:
                # new handshakes complete while 200 others are stalled
                for _ in range(5):
                    assert fresh.post(url, content=b"[]", headers=JSON).status_code == 200
        steady.check(minimum=10)
        assert agent.memory()["VmRSS"] < SETTLED_BOUND_MIB
        assert agent.stop() == 0
    finally:
        for sock in socks:
            sock.close()
        agent.kill()


def _client_hello(pki: PKI) -> bytes:
    """The first flight of a real TLS client, captured through memory BIOs."""
    ctx = client_context(pki)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- the protocol's deadlines, with the timeouts scaled down -------------------------------

class _QuickProtocol(protocol.GuardedHttpProtocol):
    first_head_timeout = 1.0
    head_timeout = 1.0


def test_deadlines_close_slow_bodies_slow_heads_and_idle_connections(tmp_path: Path) -> None:
    """Scaled: a new connection's first head 1 s (10 s in the agent), keep-alive 1 s
    (90 s), head deadline 1 s (30 s), body deadline 1 s (30 s, the apiserver's own
    request timeout)."""
    from concurrent.futures import ThreadPoolExecutor

    from healert_webhook.config import Settings

    outbox = Outbox(tmp_path / "outbox.db")
    pool = ThreadPoolExecutor(2)
    budget = BodyBudget(100_000, wait=5.0)  # room for one small event parsed
    settings = Settings(webhook_body_timeout=1.0)
    app = WebhookApp(settings, Pipeline.from_settings(settings, outbox), pool, budget=budget)
    body = orjson.dumps([exec_event(1, tag="dl")])
    try:
        with serve_app(app, protocol=_QuickProtocol, keep_alive=1.0) as local:
            port = local.port
            idle = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert idle.recv(10) == b""  # closed: no first request within its deadline
            idle.close()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as slow_head:
                slow_head.sendall(b"POST /audit HTTP/1.1\r\nhost: x\r\n")
                assert slow_head.recv(64).startswith(b"HTTP/1.1 408")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as slow_body:
                slow_body.sendall(head_for(90_000) + body[:10])  # holds most of the budget
                wait_for(lambda: budget.used == 90_000, what="reservation")
                assert slow_body.recv(64).startswith(b"HTTP/1.1 408")
            wait_for(lambda: budget.used == 0, what="the budget is free again")
            with httpx.Client(timeout=10) as client:
                url = f"http://127.0.0.1:{port}/audit"
                assert client.post(url, content=body, headers=JSON).status_code == 200
    finally:
        pool.shutdown()
        outbox.close()


def test_slow_body_gets_408_from_the_real_agent(tmp_path: Path, long_run: bool) -> None:
    """Unscaled: one byte a second for 35 s against the agent's 30 s body deadline."""
    if not long_run:
        pytest.skip("takes 35 s: run with --long")
    agent = Agent(serve_args(), tmp_path)
    try:
        port, _ = agent.ports()
        body = orjson.dumps([exec_event(1, tag="trickle")])
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head_for(len(body)))
            answer = b""
            for i in range(len(body)):
                try:
                    sock.sendall(body[i:i + 1])
                except OSError:
                    break
                sock.settimeout(1.0)
                try:
                    answer = sock.recv(64)
                except TimeoutError:
                    continue
                if answer:
                    break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert agent.stop() == 0
    finally:
        agent.kill()



# -- bodies of absurd shape ----------------------------------------------------------------

class HealthProbe:
    """Times /healthz every 50 ms in a thread, while the agent takes one body."""

    def __init__(self, ops: int) -> None:
        self.ops = ops
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                httpx.get(f"http://127.0.0.1:{self.ops}/healthz", timeout=5).raise_for_status()
                self.times.append(time.monotonic() - started)
            except httpx.HTTPError:
                self.times.append(float("inf"))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_bodies_of_absurd_shape_are_refused_or_taken_without_stalling(
        hostile: tuple[Agent, str, int]) -> None:
    agent, url, ops = hostile
    head = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
    empties = head + b",".join([b"{}"] * (21 * MiB)) + b"]}"  # 63 MiB of {} items
    zeros = head + b",".join([b"0"] * (31 * MiB)) + b"]}"  # 62 MiB of 0 items
    many = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                         "metadata": {}, "items": [exec_event(i, tag="many")
                                                   for i in range(12_000)]})
    odd = orjson.dumps([1, "x", None, [], exec_event(1, tag="odd"), {"stage": 7}])
    results: dict[str, tuple[int, str, float]] = {}
    with httpx.Client(timeout=120) as client, HealthProbe(ops) as probe:
        for name, body in (("empties", empties), ("zeros", zeros), ("many", many),
                           ("odd", odd)):
            started = time.monotonic()
            answer = client.post(url, content=body, headers=JSON)
            results[name] = (answer.status_code, answer.text, time.monotonic() - started)
        peak = agent.memory()["VmHWM"]
    assert results["empties"][0] == 413 and "HEALERT_MAX_INFLIGHT_BYTES" in results["empties"][1]
    assert results["zeros"][0] == 413 and "HEALERT_MAX_INFLIGHT_BYTES" in results["zeros"][1]
    assert results["many"][0] == 413 and "HEALERT_MAX_BATCH_ITEMS=10000" in results["many"][1]
    assert results["odd"][0] == 200  # the non-objects are counted, the event is taken
    assert metric(ops, "healert_invalid_events_total", source="webhook",
                  reason="not_an_object") >= 4
    assert max(probe.times) < 1.0, sorted(probe.times)[-3:]
    assert peak < PEAK_BOUND_MIB, peak
    print("absurd shapes:", {k: (v[0], f"{v[2]:.2f}s") for k, v in results.items()},
          f"healthz max {max(probe.times) * 1000:.0f} ms, peak {peak} MiB")


def test_objects_shaped_like_event_boundaries_neither_hide_nor_add_events(
        hostile: tuple[Agent, str, int]) -> None:
    _agent, url, ops = hostile
    sneaky = exec_event(1, tag="sneaky")
    # a user's patch holds, inside, exactly what separates two events in an EventList
    sneaky["requestObject"] = {"spec": {"rules": [{"x": 1}, {"level": "Metadata"}]}}
    honest = [exec_event(i, tag="honest") for i in range(2, 5)]
    # ...and another holds a whole exec by bob between two such boundaries
    body = event_list([sneaky, smuggling_event(), *honest])
    assert body.count(b'},{"level":"') == 4 + 1 + 2
    # a large body whose cut into groups falls on a fake boundary: parsed whole instead
    large = event_list([smuggling_event(pad=GROUP_BYTES),
                        *(exec_event(i, tag="large") for i in range(2, 5))])
    whole = metric(ops, "healert_webhook_parses_total", path="whole")
    read = metric(ops, "healert_webhook_parses_total", path="items")
    friction = metric(ops, "healert_friction_events_total", rule="kubectl-exec")
    assert httpx.post(url, content=body, headers=JSON, timeout=30).status_code == 200
    assert metric(ops, "healert_webhook_parses_total", path="items") == read + 1
    assert metric(ops, "healert_friction_events_total", rule="kubectl-exec") == friction + 4
    assert httpx.post(url, content=large, headers=JSON, timeout=30).status_code == 200
    assert metric(ops, "healert_webhook_parses_total", path="whole") == whole + 1
    assert metric(ops, "healert_friction_events_total", rule="kubectl-exec") == friction + 7
