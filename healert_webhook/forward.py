"""Drain the outbox to the Healert backend: paced, retried, head-of-line, one event at a time.

Why one at a time, oldest first: the backend has no batch endpoint and no idempotency, and
allows 60 requests per minute per IP (fixed window). Requests are paced evenly at 95% of
`forward_rate` and every request (retries and probes included) takes a slot, so any
window of W seconds holds at most floor(W / interval) + 1 of them: 58 in the backend's
60-second window at the default rate. Network jitter can bunch arrivals by a few
milliseconds, which the two spare slots absorb. The start of the last request is stored
in the outbox with the request's in-flight mark, so the spacing holds across restarts
too: a crash loop cannot fill the backend's window.

Effectively once: a row is marked in flight, durably, right before its request starts,
and removed together with the remembering of its key right after the 2xx arrives. A row
still marked in flight (the agent was killed, the request timed out, the connection was
reset after the request went out) may have reached the backend. Once the request can no
longer be running, the entity's recent events are read from the backend
(`GET /friction/{entity_ref}`): if the event is there, the row is marked delivered and
never sent again; if not, it is sent again. Only an event the read cannot show (no
timestamp, older than the backend's window or its 500 newest, a backend without the read
endpoint, reads that keep failing) is sent again unchecked, and counted
(`healert_forward_uncertain_resends_total`). A second forwarder on the same outbox (a
rolling restart, a replay with --forward) would send the same head; an exclusive lock
file next to the database lets only one process drain it at a time.
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
from healert_webhook.outbox import EXPIRED, Outbox, OutboxError, Queued

log = logging.getLogger(__name__)
events_log = logging.getLogger("healert_webhook.events")

RATE_MARGIN = 0.95
LOG_EVERY = 60.0  # seconds between repeats of a loud error while it lasts
KEY_CHECK_EVERY = 1.0
LAST_SEND = "last_send_us"  # outbox meta: when the last POST started, microseconds
RECONCILE_READS = 3  # reads of one uncertain row before it is resent unverified
READ_INTERVAL = 0.2  # seconds between reads: they are not rate limited, but not free
RECENT_WINDOW_DAYS = 30.0  # what GET /friction shows: the backend's last 30 days
GAUGE_EVERY = 1.0  # seconds between refreshes of the outbox gauges



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

    def resume(self, since_last: float, now: float) -> None:
        """The last request (of any earlier process) started `since_last` seconds ago.

        A clock set back makes that negative: then wait one interval, not forever.
        """
        wait = self.interval - since_last if since_last >= 0 else self.interval
        self._next = max(self._next, now + min(max(wait, 0.0), self.interval))


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
        self._reads_missing = False  # the backend has no read endpoint: resend blindly
        self._next_read = 0.0

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
        gauges_stop = asyncio.Event()
        gauges = asyncio.create_task(self._keep_gauges(gauges_stop), name="outbox-gauges")
        try:
            if self.settings.backend_url is None:
                await self._run_embedded(stop)
            else:
                await self._run_backend(stop)
        finally:
            gauges_stop.set()
            await asyncio.wait({gauges}, timeout=GAUGE_EVERY * 5)
            self.outbox.remove_listener(notify)
            metrics.FORWARD_PAUSED.set(0)
            self._state = "stopped"

    async def _keep_gauges(self, stop: asyncio.Event) -> None:
        """Refresh the outbox gauges at once and every second until `stop`.

        On their own clock, not the delivery loop's: that loop may wait for a long time
        (a health check the backend does not answer, the lock another process holds, a
        backoff, a pause until the next probe), and the queue's depth and age are what
        monitoring needs most exactly then. Events stored by other processes show too.
        """
        while not stop.is_set():
            await asyncio.to_thread(self.outbox.refresh_metrics, force=True)
            await self._sleep(stop, GAUGE_EVERY)

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
                await self._restore_pacer()
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
            log.info("friction event key=%s seq=%d was being sent when the agent stopped; "
                     "the backend is asked whether it has it before anything is sent again",
                     row.key, row.seq)

    async def _restore_pacer(self) -> None:
        """Start no sooner than a full interval after the last request of any process.

        The backend's window does not restart with us: a crash loop that sent at once on
        every start would fill it.
        """
        last = await self._outbox_call(self.outbox.get_meta, LAST_SEND) / 1e6
        self.pacer.resume(time.time() - last, time.monotonic())

    async def _step(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        rows = await self._outbox_call(self.outbox.head, 1)
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
        if backend_contract.older_than(body, self.settings.backend_retention_days):
            await self._dead_letter(row, None, EXPIRED.format(
                self.settings.backend_retention_days), None, "expired")
            return
        if row.in_flight is not None and not await self._reconcile(client, row, body, stop):
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
        await self._outbox_call(self.outbox.mark_in_flight, row.seq, LAST_SEND)
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
            log.warning("request for friction event key=%s failed after it may have reached "
                        "the backend (%s); the backend will be asked whether it has it "
                        "before it is sent again", row.key, outcome.detail)
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

    # -- reconciling a send whose answer was lost ---------------------------------------

    async def _reconcile(self, client: httpx.AsyncClient, row: Queued,
                         body: dict[str, Any], stop: asyncio.Event) -> bool:
        """Settle a row whose last request may have reached the backend unanswered.

        Once the request can no longer be running (the forward timeout has passed since
        it started), read the entity's recent events at the backend: found, it is marked
        delivered and not sent again; not found, it is sent again. When the read cannot
        tell, or keeps failing, the row is sent again and counted as unverifiable (the
        queue must not wait on the read for long). True when the row is still to send.
        """
        assert row.in_flight is not None
        if self._reads_missing:
            return self._resend_blind(row, "the backend has no GET /friction")
        self._state, self._reason = "reconciling", f"checking whether the backend has {row.key}"
        await self._sleep(stop, row.in_flight + self.settings.forward_timeout - time.time())
        finding = backend.Finding("error", "not read")
        for attempt in range(1, RECONCILE_READS + 1):
            if stop.is_set():
                return False
            await self._sleep(stop, self._next_read - time.monotonic())
            self._next_read = time.monotonic() + READ_INTERVAL
            finding = await backend.find_event(
                client, self.settings.backend_url or "", body, self.settings.forward_timeout,
                RECENT_WINDOW_DAYS)
            if finding.verdict != "error":
                break
            await self._sleep(stop, backoff_delay(attempt, 1.0, 8.0))
        return await self._settle(row, finding, stop)

    async def _settle(self, row: Queued, finding: backend.Finding,
                      stop: asyncio.Event) -> bool:
        if finding.verdict == "found":
            metrics.FORWARD_RECONCILED.labels("delivered").inc()
            log.info("friction event key=%s: the backend already has it (its answer was "
                     "lost); marked delivered, not sent again", row.key)
            await self._delivered_ok(row, stop)
            return False
        if finding.verdict == "missing":
            metrics.FORWARD_RECONCILED.labels("resent").inc()
            log.info("friction event key=%s: the backend does not have it; sending it again",
                     row.key)
            return True
        if finding.verdict == "no_endpoint":
            self._reads_missing = True
            log.warning("the backend answers no GET /friction/{entity_ref} (%s): events whose "
                        "answer was lost are sent again without checking, and may arrive "
                        "twice; upgrade the backend to get effectively-once delivery",
                        finding.detail)
            return self._resend_blind(row, finding.detail)
        metrics.FORWARD_RECONCILED.labels("unverifiable").inc()
        return self._resend_blind(row, finding.detail)

    @staticmethod
    def _resend_blind(row: Queued, why: str) -> bool:
        metrics.FORWARD_UNCERTAIN_RESENDS.inc()
        log.warning("friction event key=%s may have reached the backend, and it cannot be "
                    "checked (%s): sending it again, a possible duplicate", row.key, why)
        return True

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
