"""The forwarder against a real backend process (tests/backend_server.py) over loopback.

Every scenario asserts the exact sequence of events the backend ended up with. Rates,
windows and backoffs are shrunk so each runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from healert_webhook import health
from healert_webhook.backend import check_health
from healert_webhook.config import Settings
from healert_webhook.forward import Forwarder, Pacer, backoff_delay
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.backend import Backend, run_backend

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key"


# An hour ago, as the apiserver writes request times (microseconds, Z): inside the window
# the backend shows, so a send whose answer was lost can be checked.
BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def stamp(n: int) -> str:
    return (BASE_TIME + timedelta(microseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def friction(n: int, rule: str = "exec-into-pod", **extra: Any) -> Friction:
    event = {"entity_ref": f"component:default/svc-{n % 7}", "type": rule, "severity": "high",
             "description": f"event-{n}", "actor": "alice", "timestamp": stamp(n), **extra}
    return Friction(f"{n:032x}", rule, event)


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["description"].split("-")[1]) for e in events]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def make_settings(tmp_path: Path, backend: Backend | None, *, rate: float = 6000.0,
                  key: str = KEY, **more: Any) -> Settings:
    key_file = tmp_path / "api-key"
    if not key_file.exists():
        key_file.write_text(key + "\n")
    return Settings(backend_url=backend.url if backend else None, api_key_file=key_file,
                    state_dir=tmp_path / "state", forward_rate=rate, backoff_base=0.05,
                    backoff_max=0.3, **more)


@contextlib.contextmanager
def forwarding(settings: Settings, outbox: Outbox, *, probe: float = 60.0,
               poll: float = 0.2) -> Iterator[Forwarder]:
    """Run a Forwarder on its own event loop in a thread (as server.py runs it)."""
    fwd = Forwarder(settings, outbox)
    fwd.probe_interval = probe
    fwd.poll_interval = poll
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(fwd.run(stop))
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.close()

    def watch() -> None:  # the agent's watcher of reloadable files, for the key file
        while thread.is_alive():
            fwd.keys.reload()
            time.sleep(0.2)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    threading.Thread(target=watch, daemon=True).start()
    try:
        yield fwd
    finally:
        wait_for(lambda: loop.is_running() or not thread.is_alive(), 5, "loop start")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "forwarder did not stop"
        assert errors == []


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with run_backend(tmp_path, api_key=KEY, limit=10_000, window=60.0) as server:
        yield server


# -- pure parts ---------------------------------------------------------------------------

def test_pacer_never_exceeds_a_fixed_window() -> None:
    """Whatever pauses happen between requests, no fixed 60 s window sees more than the
    limit: evenly spaced at 95% and never catching up leaves two spare slots for jitter."""
    rng = random.Random(7)
    for rate in (1, 2, 10, 60, 61, 120, 1800):
        pacer = Pacer(rate)
        now, starts = 0.0, []
        for _ in range(3000):
            now += pacer.delay(now) + rng.choice([0.0, 0.0, rng.random() * 3])
            pacer.take(now)
            starts.append(now)
        per_window = Counter(int(t // 60) for t in starts)
        assert max(per_window.values()) <= rate, rate
        # and with 5 ms of network jitter on every arrival, still within the limit
        jittered = Counter(int((t + rng.uniform(-0.005, 0.005)) // 60) for t in starts)
        assert max(jittered.values()) <= max(rate, 1), rate


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert backoff_delay(1, 1.0, 300.0, rand=0.0) == 0.5
    assert backoff_delay(1, 1.0, 300.0, rand=1.0) == 1.0
    assert backoff_delay(4, 1.0, 300.0, rand=1.0) == 8.0
    assert backoff_delay(50, 1.0, 300.0, rand=1.0) == 300.0
    assert 150.0 <= backoff_delay(10_000, 1.0, 300.0) <= 300.0




# -- health --------------------------------------------------------------------------------

def test_health_check(tmp_path: Path, backend: Backend) -> None:
    settings = make_settings(tmp_path, backend)
    report = asyncio.run(check_health(settings))
    assert report.reachable and report.status == "ok" and report.version == "test-1.0"
    assert report.auth_enabled is True and report.key_set and health.warnings(report) == []
    no_key = Settings(backend_url=backend.url)
    warnings = health.warnings(asyncio.run(check_health(no_key)))
    assert len(warnings) == 1 and "HEALERT_API_KEY" in warnings[0]
    backend.stop()
    down = asyncio.run(check_health(settings))
    assert not down.reachable and "unreachable" in health.warnings(down)[0]


# -- scenarios ------------------------------------------------------------------------------

def test_steady_load_above_the_rate_limit_gets_no_429(tmp_path: Path) -> None:
    """The backend allows 20 requests per 1 s window (the real one: 60 per minute); the
    agent is configured for the same rate and gets twice that load."""
    with run_backend(tmp_path, api_key=KEY, limit=20, window=1.0) as server:
        settings = make_settings(tmp_path, server, rate=20 * 60)
        box = Outbox(settings.outbox_path)
        box.store([friction(n) for n in range(30)])
        with forwarding(settings, box):
            time.sleep(0.5)
            box.store([friction(n) for n in range(30, 60)])  # more arrives while sending
            wait_for(lambda: len(server.accepted()) >= 60, 30, "60 deliveries")
        view = server.view()
        box.close()
    assert numbers(server.accepted()) == list(range(60))
    assert view["statuses"] == {"200": 60}  # not a single 429
    assert view["max_in_window"] <= 20


def test_backend_outage_then_recovery(tmp_path: Path, backend: Backend,
                                      outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend)
    outbox.store([friction(n) for n in range(3)])
    with forwarding(settings, outbox) as fwd:
        wait_for(lambda: len(backend.accepted()) == 3, what="first deliveries")
        backend.stop()
        outbox.store([friction(n) for n in range(3, 8)])
        wait_for(lambda: fwd.status()["state"] == "backoff", what="backoff")
        time.sleep(0.5)  # several failed attempts
        assert outbox.stats().depth == 5
        backend.start()
        wait_for(lambda: len(backend.accepted()) >= 8, what="recovery")
        wait_for(lambda: outbox.stats().depth == 0, what="empty outbox")
    assert numbers(backend.accepted()) == list(range(8))


def test_server_errors_and_429_are_retried_in_order(tmp_path: Path, backend: Backend,
                                                    outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend)
    backend.control(mode="500")
    outbox.store([friction(n) for n in range(4)])
    before = sample("healert_forward_attempts_total", {"outcome": "server_error"})
    with forwarding(settings, outbox):
        wait_for(lambda: backend.statuses().get(500, 0) >= 3, what="500s")
        backend.control(mode="429")  # with Retry-After: 1
        wait_for(lambda: backend.statuses().get(429, 0) >= 1, what="429")
        backend.control(mode="ok")
        wait_for(lambda: len(backend.accepted()) >= 4, what="deliveries")
    assert numbers(backend.accepted()) == [0, 1, 2, 3]
    assert sample("healert_forward_attempts_total", {"outcome": "server_error"}) >= before + 3
    assert backend.statuses().get(429) == 1  # Retry-After honoured: no hammering


def test_the_same_batch_stored_twice_is_sent_once(tmp_path: Path, backend: Backend,
                                                  outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend)
    batch = [friction(n) for n in range(5)]
    outbox.store(batch)
    outbox.store(batch)
    with forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, what="delivery")
        assert outbox.store(batch).duplicates == 5  # a late resend after delivery
        outbox.store([friction(5)])
        wait_for(lambda: len(backend.accepted()) >= 6, what="the new event")
        time.sleep(0.3)
    assert numbers(backend.accepted()) == list(range(6))


def test_rejections_are_dead_lettered_and_retried_after_a_fix(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    from healert_webhook.commands.outbox import outbox_command

    settings = make_settings(tmp_path, backend)
    backend.control(reject_types=["port-forward"])  # a stricter backend version
    outbox.store([friction(0), friction(1, "port-forward"), friction(2),
                  # would be refused by any backend: a colon in the name
                  Friction(f"{3:032x}", "read-secret",
                           {"entity_ref": "component:default/system:edit", "type": "read-secret",
                            "severity": "low", "description": "event-3"}),
                  friction(4, description=" event-4 ", extra="dropped")])
    with forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, what="queue drained")
        dead = {d.key[-1]: d for d in outbox.dead_letters()}
        assert set(dead) == {"1", "3"}
        assert dead["1"].status == 422 and "not accepted" in (dead["1"].answer or "")
        assert dead["3"].status is None and dead["3"].reason.startswith("contract: entity_ref")
        assert backend.statuses() == {200: 3, 422: 1}  # no request for the invalid one
        backend.control(reject_types=[])
        args = _Args(keys=[f"{1:032x}"])
        assert outbox_command(settings, "retry-dead", args) == 0
        wait_for(lambda: len(backend.accepted()) >= 4, what="requeued delivery")
    accepted = backend.accepted()
    assert numbers(accepted) == [0, 2, 4, 1]
    assert accepted[2] == {"entity_ref": "component:default/svc-4", "type": "exec-into-pod",
                           "severity": "high", "description": "event-4", "actor": "alice",
                           "timestamp": stamp(4)}
    assert [d.key for d in outbox.dead_letters()] == [f"{3:032x}"]


class _Args:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def test_wrong_key_pauses_and_the_key_file_fix_resumes(tmp_path: Path, backend: Backend,
                                                       outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend, key="wrong-key")
    outbox.store([friction(n) for n in range(3)])
    with forwarding(settings, outbox, probe=60.0) as fwd:
        wait_for(lambda: fwd.status()["state"] == "paused", what="pause")
        status = fwd.status()
        assert status["state"] == "paused" and "HEALERT_API_KEY_FILE" in str(status["reason"])
        assert sample("healert_forward_paused") == 1
        time.sleep(1.2)
        assert backend.statuses() == {401: 1}  # paused: no more requests
        assert outbox.stats().depth == 3
        (tmp_path / "api-key").write_text(KEY + "\n")
        wait_for(lambda: len(backend.accepted()) >= 3, what="resume after the key fix")
        assert sample("healert_forward_paused") == 0
    assert numbers(backend.accepted()) == [0, 1, 2]


def test_a_paused_forwarder_probes_and_resumes(tmp_path: Path, backend: Backend,
                                               outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend)
    backend.control(mode="401")  # the backend's key was rotated...
    outbox.store([friction(n) for n in range(2)])
    with forwarding(settings, outbox, probe=0.3) as fwd:
        wait_for(lambda: backend.statuses().get(401, 0) >= 2, what="probes")
        assert fwd.status()["state"] == "paused" or backend.statuses().get(401, 0) >= 2
        backend.control(mode="ok")  # ...and rotated back
        wait_for(lambda: len(backend.accepted()) >= 2, what="resume by probe")
    assert numbers(backend.accepted()) == [0, 1]


def test_without_a_backend_events_are_logged_once_and_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, None)
    box = Outbox(settings.outbox_path)
    box.store([friction(0), friction(1)])

    def lines() -> list[dict[str, Any]]:
        return [r.__dict__ for r in caplog.records if r.name == "healert_webhook.events"]

    with caplog.at_level(logging.INFO, logger="healert_webhook.events"):
        with forwarding(settings, box) as fwd:
            wait_for(lambda: len(lines()) == 2, what="two log lines")
            assert fwd.status()["state"] == "embedded"
        with forwarding(settings, box):  # a restart does not log them again
            box.store([friction(2)])
            wait_for(lambda: len(lines()) == 3, what="the new event")
            time.sleep(0.3)
    assert len(lines()) == 3 and lines()[2]["event"]["description"] == "event-2"
    assert box.stats().depth == 3
    with run_backend(tmp_path, api_key=KEY) as server, \
            forwarding(make_settings(tmp_path, server), box):
        wait_for(lambda: len(server.accepted()) >= 3, what="delivery once configured")
    box.close()
    assert numbers(server.accepted()) == [0, 1, 2]


def test_two_forwarders_on_one_outbox_send_each_event_once(tmp_path: Path,
                                                           backend: Backend) -> None:
    settings = make_settings(tmp_path, backend, rate=1200)
    first, second = Outbox(settings.outbox_path), Outbox(settings.outbox_path)
    first.store([friction(n) for n in range(10)])
    with forwarding(settings, first) as a, forwarding(settings, second) as b:
        wait_for(lambda: len(backend.accepted()) >= 10, what="deliveries")
        states = {a.status()["state"], b.status()["state"]}
        time.sleep(0.3)
    assert "locked" in states
    assert numbers(backend.accepted()) == list(range(10))
    first.close()
    second.close()


# -- kill -9 ------------------------------------------------------------------------------

def agent_env(settings: Settings, url: str, **more: str) -> dict[str, str]:
    """The environment of a `tail` process that only forwards (its log file never exists)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEALERT_BACKEND_URL": url,
           "HEALERT_STATE_DIR": str(settings.state_dir),
           "HEALERT_API_KEY_FILE": str(settings.api_key_file),
           "HEALERT_FORWARD_RATE": "6000", "HEALERT_BACKOFF_BASE": "0.05",
           "HEALERT_BACKOFF_MAX": "0.2", "HEALERT_OPS_LISTEN": "127.0.0.1:0",
           "HEALERT_FORWARD_TIMEOUT": "1", **more}
    env.pop("HEALERT_API_KEY", None)
    return env


def start_forwarding_agent(tmp_path: Path, env: dict[str, str], name: str
                           ) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "healert_webhook", "tail", "--audit-log",
                                 str(tmp_path / "no-such.log")], env=env, stderr=out, stdout=out)
    wait_for(lambda: "): mode tail" in log_path.read_text(), 20, "start")
    return proc, log_path


def test_kill_9_during_delivery_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, long_run: bool) -> None:
    """The forwarding process is SIGKILLed at random points, 20 times (100 with --long),
    then runs to the end. Every event arrives exactly once: a request cut off by a kill
    after the backend took it is found by the restarted agent at the backend and marked
    delivered instead of being sent again."""
    kills = 100 if long_run else 20
    total = 40 * kills // 8
    seed = int(time.time())
    rng = random.Random(seed)
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as server:
        # 20 ms of backend work before it records the event: kills land inside requests
        server.control(latency=0.02)
        settings = make_settings(tmp_path, server)
        box = Outbox(settings.outbox_path)
        box.store([friction(n) for n in range(total)])
        box.close()
        env = agent_env(settings, server.url)
        logs = []
        for run in range(kills + 1):
            proc, log_path = start_forwarding_agent(tmp_path, env, f"run-{run}")
            logs.append(log_path)
            if run < kills:
                time.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
            else:
                wait_for(lambda: set(numbers(server.accepted())) == set(range(total)), 60,
                         "all delivered")
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
        accepted = numbers(server.accepted())
    counts = Counter(accepted)
    text = "".join(p.read_text() for p in logs)
    found = text.count("the backend already has it")
    summary = (f"seed {seed}: {kills} kills, {total} events, {found} found at the backend "
               f"after a kill, duplicates {sum(c - 1 for c in counts.values())}")
    print(summary)
    assert set(counts) == set(range(total)), summary  # nothing lost
    assert max(counts.values()) == 1, summary  # nothing twice
    assert "cannot be checked" not in text, summary
    firsts = list(dict.fromkeys(accepted))
    assert firsts == sorted(firsts), summary  # in queue order


def test_a_timed_out_send_the_backend_took_is_not_sent_again(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend, forward_timeout=0.5)
    backend.control(latency_after=1.5)  # stored, then the answer comes after our timeout
    outbox.store([friction(1)])
    delivered = sample("healert_forward_reconciled_total", {"result": "delivered"})
    with forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, 15, "settled")
        backend.control(latency_after=0.0)
        outbox.store([friction(2)])
        wait_for(lambda: len(backend.accepted()) == 2, 15, "the next event")
    assert numbers(backend.accepted()) == [1, 2]
    assert sample("healert_forward_reconciled_total", {"result": "delivered"}) == delivered + 1


def test_a_send_lost_before_the_backend_stored_it_is_sent_again(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    settings = make_settings(tmp_path, backend, forward_timeout=0.5)
    backend.control(mode="hold_unstored")  # held past our timeout, then dropped unstored
    outbox.store([friction(1)])
    resent = sample("healert_forward_reconciled_total", {"result": "resent"})
    with forwarding(settings, outbox):
        wait_for(lambda: backend.view()["held"] >= 1, 10, "the first send held")
        wait_for(lambda: sample("healert_forward_reconciled_total", {"result": "resent"})
                 >= resent + 1, 15, "checked, not found, sent again")
        backend.control(mode="ok")
        backend.release()
        wait_for(lambda: outbox.stats().depth == 0, 15, "delivered")
    assert numbers(backend.accepted()) == [1]


def test_unverifiable_sends_and_a_backend_without_reads_fall_back_loudly(
        tmp_path: Path, backend: Backend, outbox: Outbox,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, backend, forward_timeout=0.5)
    backend.control(latency_after=1.5, reads=False)
    outbox.store([friction(1), friction(2)])
    uncertain = sample("healert_forward_uncertain_resends_total")
    with caplog.at_level(logging.WARNING, logger="healert_webhook.forward"), \
            forwarding(settings, outbox):
        wait_for(lambda: len(backend.accepted()) >= 3, 20, "resent blindly")
        backend.control(latency_after=0.0)
        wait_for(lambda: outbox.stats().depth == 0, 20, "delivered")
    assert sample("healert_forward_uncertain_resends_total") >= uncertain + 1
    said = [r.getMessage() for r in caplog.records if "upgrade the backend" in r.getMessage()]
    assert len(said) == 1  # loudly, once
    # no timestamp: the backend stamps its own, so no read can find it
    no_time = Friction("f" * 32, "exec-into-pod", {
        "entity_ref": "component:default/svc-x", "type": "exec-into-pod", "severity": "high",
        "description": "event-99"})
    backend.control(latency_after=1.5, reads=True)
    outbox.store([no_time])
    unverifiable = sample("healert_forward_reconciled_total", {"result": "unverifiable"})
    with forwarding(settings, outbox):
        wait_for(lambda: sample("healert_forward_reconciled_total", {"result": "unverifiable"})
                 == unverifiable + 1, 20, "unverifiable")
        backend.control(latency_after=0.0)
        wait_for(lambda: outbox.stats().depth == 0, 20, "delivered")


def test_events_older_than_the_backend_retention_are_set_aside(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    old = friction(1, timestamp="2020-01-01T00:00:00.000000Z")
    result = outbox.store([old, friction(2)])
    assert (result.stored, result.expired) == (1, 1)
    [letter] = outbox.dead_letters()
    assert letter.key == old.key and letter.reason.startswith("expired")
    settings = make_settings(tmp_path, backend, backend_retention_days=0.5)
    # one that aged in the queue while the backend was away: set aside before it is sent
    outbox.store([friction(3, timestamp=(datetime.now(UTC) - timedelta(days=1)).isoformat())])
    with forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, 15, "drained")
    assert numbers(backend.accepted()) == [2]
    assert {d.key for d in outbox.dead_letters()} == {old.key, friction(3).key}


def test_the_pacer_spacing_survives_a_restart() -> None:
    pacer = Pacer(60.0)
    pacer.resume(since_last=0.2, now=100.0)  # another process sent 0.2 s ago
    assert pacer.delay(100.0) == pytest.approx(pacer.interval - 0.2)
    fresh = Pacer(60.0)
    fresh.resume(since_last=3600.0, now=100.0)
    assert fresh.delay(100.0) == 0.0
    clock_back = Pacer(60.0)
    clock_back.resume(since_last=-86400.0, now=100.0)  # the wall clock went back a day
    assert clock_back.delay(100.0) == pytest.approx(clock_back.interval)


# -- nothing ends the forwarder -----------------------------------------------------------

def test_an_unexpected_error_on_one_row_sets_it_aside_and_the_rest_go_on(
        tmp_path: Path, backend: Backend, outbox: Outbox, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A fault injected into the send of one event (a stand-in: after this round no known
    input of the backend, the key file or the outbox raises there any more) backs that
    row off while the others are delivered, then sets it aside as a dead letter."""
    from healert_webhook import backend as backend_api
    real_send = backend_api.send

    async def send(client: Any, url: str, key: str | None, body: dict[str, Any],
                   timeout: float) -> Any:
        if body["description"] == "event-1":
            raise RuntimeError("injected fault")
        return await real_send(client, url, key, body, timeout)

    monkeypatch.setattr(backend_api, "send", send)
    # the fault comes after the in-flight mark: each retry first reads whether it arrived
    settings = make_settings(tmp_path, backend, forward_timeout=0.3)
    outbox.store([friction(n) for n in range(4)])
    errors = sample("healert_forward_errors_total", {"where": "row"})
    with caplog.at_level(logging.ERROR, logger="healert_webhook.forward"), \
            forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, 30, "delivered or set aside")
    assert numbers(backend.accepted()) == [0, 2, 3]
    [letter] = outbox.dead_letters()
    assert letter.key == friction(1).key
    assert letter.reason == "unexpected error, 5 times: RuntimeError: injected fault"
    assert sample("healert_forward_errors_total", {"where": "row"}) == errors + 5
    about = [r for r in caplog.records if friction(1).key in r.getMessage()]
    assert len([r for r in about if r.exc_info]) == 1  # the traceback once, then short lines


def test_an_error_that_strikes_every_row_stops_the_queue_and_parks_nothing(
        tmp_path: Path, backend: Backend, outbox: Outbox,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same injected fault on every row: it is the forwarder's, not a row's, so no row
    becomes a dead letter however often it fails; once it is gone, all are delivered."""
    from healert_webhook import backend as backend_api
    real_send = backend_api.send
    broken = threading.Event()
    broken.set()

    async def send(client: Any, url: str, key: str | None, body: dict[str, Any],
                   timeout: float) -> Any:
        if broken.is_set():
            raise RuntimeError("injected fault")
        return await real_send(client, url, key, body, timeout)

    monkeypatch.setattr(backend_api, "send", send)
    settings = make_settings(tmp_path, backend, forward_timeout=0.3)
    outbox.store([friction(n) for n in range(3)])
    errors = sample("healert_forward_errors_total", {"where": "row"})
    with forwarding(settings, outbox) as fwd:
        wait_for(lambda: sample("healert_forward_errors_total", {"where": "row"})
                 >= errors + 15, 30, "every row failing five times and more")
        assert "back off after unexpected errors" in str(fwd.status()["reason"])
        assert outbox.dead_letters() == [] and outbox.stats().depth == 3
        broken.clear()
        wait_for(lambda: outbox.stats().depth == 0, 30, "delivered once the fault is gone")
    assert sorted(numbers(backend.accepted())) == [0, 1, 2]


def test_the_loop_survives_an_error_outside_any_row(
        tmp_path: Path, backend: Backend, outbox: Outbox,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected fault where no row is at hand (reading the queue's head): the last
    resort logs, counts and backs off, and the forwarder goes on."""
    real_head = Outbox.head
    failures = [RuntimeError("injected fault"), KeyError("another")]

    def head(self: Outbox, *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real_head(self, *args, **kwargs)

    monkeypatch.setattr(Outbox, "head", head)
    settings = make_settings(tmp_path, backend)
    outbox.store([friction(n) for n in range(2)])
    errors = sample("healert_forward_errors_total", {"where": "loop"})
    with forwarding(settings, outbox):
        wait_for(lambda: outbox.stats().depth == 0, 30, "delivered")
    assert numbers(backend.accepted()) == [0, 1]
    assert sample("healert_forward_errors_total", {"where": "loop"}) == errors + 2


