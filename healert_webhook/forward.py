"""Drain the outbox to the Healert backend: paced, retried, head-of-line, one event at a time.

Why one at a time, oldest first: the backend has no batch endpoint and no idempotency, and
allows 60 requests per minute per IP (fixed window). Requests are paced evenly at 95% of
`forward_rate` and every request (retries and probes included) takes a slot, so any
window of W seconds holds at most floor(W / interval) + 1 of them: 58 in the backend's
60-second window at the default rate. Network jitter can bunch arrivals by a few
milliseconds, which the two spare slots absorb, so the limiter does not answer 429 in
steady state (a sender that spaces requests at exactly 60/min can fit 2x the limit
around a window boundary if it ever catches up after a pause; the pacer never catches up).

Duplicates: a row is marked in flight, durably, right
before its request starts, and removed together with the remembering of its key right
after the 2xx arrives. A kill between the two leaves a row marked in flight: the agent
cannot know whether the backend got it, and losing it is worse than a duplicate, so it is
sent again and counted (`healert_forward_uncertain_resends_total`, a warning naming the
key). That window, from the request reaching the backend to the commit of its answer (one
round trip plus one fsync), and a request that timed out after the backend took it, are
the only ways an event reaches the backend twice. Marking in flight alone would not
prevent more: a second forwarder on the same outbox (a rolling restart, a replay with
--forward) would send the same head; an exclusive lock file next to the database lets only
one process drain it at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import random
import time
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from healert_webhook import backend, backend_contract, metrics
from healert_webhook.config import ConfigError, Settings
from healert_webhook.filewatch import FileWatch
from healert_webhook.outbox import Outbox, OutboxError, Queued

log = logging.getLogger(__name__)
events_log = logging.getLogger("healert_webhook.events")

RATE_MARGIN = 0.95
LOG_EVERY = 60.0  # seconds between repeats of a loud error while it lasts
KEY_CHECK_EVERY = 1.0


# -- pacing and backoff ------------------------------------------------------------------

class Pacer:
    """Evenly spaced request starts at `RATE_MARGIN` of `per_minute`; never catches up."""

    def __init__(self, per_minute: float, margin: float = RATE_MARGIN) -> None:
        self.interval = 60.0 / (per_minute * margin)
        self._next = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may start."""
        return max(0.0, self._next - now)

    def take(self, now: float) -> None:
        """A request starts now: the next one waits a full interval."""
        self._next = max(now, self._next) + self.interval


def backoff_delay(failures: int, base: float, cap: float,
                  rand: float | None = None) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of
    min(cap, base * 2**(failures-1)), so retries of many agents spread out but never
    come back sooner than half the intended delay."""
    ceiling = min(cap, base * 2.0 ** max(0, min(failures - 1, 60)))
    jitter = random.random() if rand is None else rand  # noqa: S311 - not cryptographic
    return ceiling / 2 + jitter * ceiling / 2


# -- the key -------------------------------------------------------------------------------

class KeySource:
    """The bearer key, re-read when the key file changes (checked at most once a second)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key: str | None = None
        self.error: str | None = None
        path = settings.api_key_file
        self._watch = FileWatch(path) if path is not None else None
        self._checked = -1e9

    def load(self) -> None:
        """Read the key now (blocking)."""
        self._checked = time.monotonic()
        try:
            self.key = self.settings.read_api_key()
            self.error = None
        except ConfigError as exc:
            self.key, self.error = None, str(exc)

    def refresh(self) -> bool:
        """Re-read the key if the file changed; True when it did (blocking, cheap)."""
        now = time.monotonic()
        if self._watch is None or now - self._checked < KEY_CHECK_EVERY:
            return False
        self._checked = now
        if not self._watch.changed():
            return False
        self.load()
        log.info("API key file %s changed: key re-read", self.settings.api_key_file)
        return True


# -- the forwarder -------------------------------------------------------------------------

class Forwarder:
    """Drains the outbox to the backend until stopped (see the module docstring)."""

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self.pacer = Pacer(settings.forward_rate)
        self.keys = KeySource(settings)
        self.probe_interval = settings.forward_probe_interval
        self.poll_interval = settings.forward_poll_interval
        self._wake: asyncio.Event | None = None
        self._state = "starting"
        self._reason: str | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._last_delivery: float | None = None
        self._delivered = 0
        self._last_loud = -1e9
        self._probe_at = 0.0
        self._stop: asyncio.Event | None = None

    # -- public ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """State for /readyz's body (deliveries never make the agent unready)."""
        return {
            "state": self._state,
            "reason": self._reason,
            "backend": self.settings.backend_url,
            "delivered": self._delivered,
            "last_delivery": self._last_delivery,
            "last_error": self._last_error,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver (or, with no backend URL, log) queued events until `stop` is set."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = stop
        wake = self._wake

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to wake
                loop.call_soon_threadsafe(wake.set)

        self.outbox.add_listener(notify)
        try:
            if self.settings.backend_url is None:
                await self._run_embedded(stop)
            else:
                await self._run_backend(stop)
        finally:
            self.outbox.remove_listener(notify)
            metrics.FORWARD_PAUSED.set(0)
            self._state = "stopped"

    # -- embedded mode -----------------------------------------------------------------

    async def _run_embedded(self, stop: asyncio.Event) -> None:
        self._state, self._reason = "embedded", "no backend URL: events are logged and kept"
        log.warning("no HEALERT_BACKEND_URL: friction events stay in the outbox %s and are "
                    "written to the log (logger healert_webhook.events); they are delivered "
                    "once a backend URL is configured", self.outbox.path)
        logged = await asyncio.to_thread(self.outbox.get_meta, "logged_seq")
        while not stop.is_set():
            rows = await self._outbox_call(self.outbox.head, 500, logged)
            if rows:
                for row in rows:
                    events_log.info("%s", orjson.dumps(
                        {"key": row.key, "rule": row.rule, "event": row.event}).decode())
                logged = rows[-1].seq
                await self._outbox_call(self.outbox.set_meta, "logged_seq", logged)
                continue
            await asyncio.to_thread(self.outbox.refresh_metrics)
            await self._wait_for_work(stop)

    # -- delivery ----------------------------------------------------------------------

    async def _run_backend(self, stop: asyncio.Event) -> None:
        lock = await self._lock(stop)
        if lock is None:
            return
        try:
            await asyncio.to_thread(self.keys.load)
            async with backend.make_client(self.settings.forward_timeout) as client:
                report = await backend.check_health(self.settings, client)
                for warning in report.warnings():
                    log.warning("%s", warning)
                if report.reachable:
                    log.info("backend %s: status %s, version %s, auth %s", report.url,
                             report.status, report.version, report.auth)
                await self._recover()
                self._state = "idle"
                while not stop.is_set():
                    await self._step(client, stop)
        finally:
            lock.close()

    async def _lock(self, stop: asyncio.Event) -> IO[bytes] | None:
        """Hold an exclusive lock so one process drains this outbox (see module docstring)."""
        path = Path(f"{self.outbox.path}.forward.lock")
        handle = await asyncio.to_thread(open, path, "ab")
        warned = False
        while not stop.is_set():
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if not warned:
                    log.warning("another process is delivering from %s; waiting for it to "
                                "stop", self.outbox.path)
                    warned = True
                self._state, self._reason = "locked", "another process holds the outbox"
                await self._sleep(stop, self.poll_interval)
        handle.close()
        return None

    async def _recover(self) -> None:
        for row in await self._outbox_call(self.outbox.in_flight):
            metrics.FORWARD_UNCERTAIN_RESENDS.inc()
            log.warning("friction event key=%s seq=%d was being sent when the agent stopped; "
                        "the backend may already have it. Sending it again (the only case a "
                        "duplicate is possible)", row.key, row.seq)

    async def _step(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        rows = await self._outbox_call(self.outbox.head, 1)
        await asyncio.to_thread(self.outbox.refresh_metrics)
        if not rows:
            if self._state != "paused":  # paused stays paused until a probe or a new key
                self._state, self._reason = "idle", None
            await self._wait_for_work(stop)
            return
        row = rows[0]
        body, problem = backend_contract.prepare(row.event)
        if body is None:
            await self._dead_letter(row, None, f"contract: {problem}", None, "contract")
            return
        if self._state == "paused" and not await self._wait_paused(stop):
            return
        await self._sleep(stop, self.pacer.delay(time.monotonic()))
        if stop.is_set():
            return
        await self._send_row(client, row, body, stop)

    async def _send_row(self, client: httpx.AsyncClient, row: Queued, body: dict[str, Any],
                        stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.keys.refresh)
        await self._outbox_call(self.outbox.mark_in_flight, row.seq)
        self.pacer.take(time.monotonic())
        outcome = await self._post(client, body)
        metrics.FORWARD_ATTEMPTS.labels(outcome.label).inc()
        if outcome.kind == "delivered":
            await self._delivered_ok(row, stop)
        elif outcome.kind == "rejected":
            await self._dead_letter(row, outcome.status, outcome.detail, outcome.answer,
                                    f"http_{outcome.status}")
        elif outcome.kind == "pause":
            await self._mark_failed(row, outcome)
            self._pause(outcome.detail)
        else:
            await self._mark_failed(row, outcome)
            await self._backoff(outcome, stop)

    async def _post(self, client: httpx.AsyncClient,
                    body: dict[str, Any]) -> backend.Outcome:
        started = time.perf_counter()
        try:
            return await backend.send(client, self.settings.backend_url or "", self.keys.key,
                                      body, self.settings.forward_timeout)
        finally:
            metrics.FORWARD_DURATION.observe(time.perf_counter() - started)

    async def _delivered_ok(self, row: Queued, stop: asyncio.Event) -> None:
        # The backend has the event: the commit must happen, or a restart sends it again.
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.outbox.mark_delivered, row.seq, row.key)
                break
            except OutboxError as exc:
                attempt += 1
                self._loud(f"delivered event key={row.key} could not be marked delivered "
                           f"({exc}); retrying so it is not sent twice")
                if stop.is_set() and attempt > 3:
                    return
                await asyncio.sleep(backoff_delay(attempt, 0.1, 5.0))
        self._failures = 0
        self._delivered += 1
        self._last_delivery = time.time()
        self._state, self._reason = "delivering", None

    async def _dead_letter(self, row: Queued, status: int | None, reason: str,
                           answer: str | None, label: str) -> None:
        await self._outbox_call(self.outbox.dead_letter, row.seq, status=status,
                                reason=reason, answer=answer)
        metrics.DEAD_LETTERED.labels(label).inc()
        log.error("friction event key=%s rule=%s entity=%s dead-lettered: %s%s", row.key,
                  row.rule, row.event.get("entity_ref"), reason,
                  f" — backend said: {answer[:300]}" if answer else "")
        await asyncio.to_thread(self.outbox.refresh_metrics, force=True)

    async def _mark_failed(self, row: Queued, outcome: backend.Outcome) -> None:
        self._last_error = outcome.detail
        if not outcome.not_taken:
            metrics.FORWARD_UNCERTAIN_RESENDS.inc()
            log.warning("request for friction event key=%s failed after it may have reached "
                        "the backend (%s); it will be sent again (a possible duplicate)",
                        row.key, outcome.detail)
        await self._outbox_call(self.outbox.mark_failed, row.seq, outcome.detail,
                                not_taken=outcome.not_taken)

    async def _backoff(self, outcome: backend.Outcome, stop: asyncio.Event) -> None:
        self._failures += 1
        delay = backoff_delay(self._failures, self.settings.backoff_base,
                              self.settings.backoff_max)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        self._state = "backoff"
        self._reason = f"{outcome.detail}; retrying in {delay:.1f}s"
        log.warning("delivery failed (%s), attempt %d; retrying the oldest event in %.1fs",
                    outcome.detail, self._failures, delay)
        await self._sleep(stop, delay)

    # -- pause on a refused key ---------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if self._state != "paused":
            self._last_loud = -1e9
        if self.keys.error:
            reason = f"{reason} ({self.keys.error})"
        self._state, self._reason = "paused", reason
        metrics.FORWARD_PAUSED.set(1)
        self._loud(f"deliveries paused: {reason}; events stay queued")
        self._probe_at = time.monotonic() + self.probe_interval

    async def _wait_paused(self, stop: asyncio.Event) -> bool:
        """Wait until the key file changes or a probe is due; False when stopping."""
        while not stop.is_set():
            if await asyncio.to_thread(self.keys.refresh):
                log.info("API key file changed: resuming deliveries")
                break
            if time.monotonic() >= self._probe_at:
                log.info("deliveries paused: probing the backend with the oldest event")
                break
            self._loud(f"deliveries paused: {self._reason}; events stay queued")
            await self._sleep(stop, min(KEY_CHECK_EVERY, self.probe_interval))
        else:
            return False
        metrics.FORWARD_PAUSED.set(0)
        self._state = "delivering"
        return True

    # -- helpers -------------------------------------------------------------------------

    def _loud(self, message: str) -> None:
        """Log an error at most once a minute while the condition lasts."""
        now = time.monotonic()
        if now - self._last_loud >= LOG_EVERY:
            self._last_loud = now
            log.error("%s", message)

    async def _outbox_call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an outbox method in a thread; on failure wait and retry (nothing is lost:
        the queue stays as it was) until it works."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(func, *args, **kwargs)
            except OutboxError as exc:
                attempt += 1
                if self._stop is not None and self._stop.is_set():
                    raise
                self._loud(f"outbox unavailable ({exc}); delivery waits")
                await asyncio.sleep(backoff_delay(attempt, 0.5, 30.0))

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        wake = self._wake
        if wake is None:
            await self._sleep(stop, self.poll_interval)
            return
        wake.clear()
        stop_task = asyncio.ensure_future(stop.wait())
        wake_task = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({stop_task, wake_task}, timeout=self.poll_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
            wake_task.cancel()

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
