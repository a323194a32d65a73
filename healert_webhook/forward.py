"""Drain the outbox to the Healert backend: paced, retried, one event at a time.

Why one at a time, oldest first: the backend has no batch endpoint and no idempotency, and
allows 60 requests per minute per IP (fixed window). Requests are paced evenly at 95% of
`forward_rate` and every request (retries and probes included) takes a slot, so any
window of W seconds holds at most floor(W / interval) + 1 of them: 58 in the backend's
60-second window at the default rate. Network jitter can bunch arrivals by a few
milliseconds, which the two spare slots absorb. The start of the last request is stored
in the outbox with the request's in-flight mark, so the spacing holds across restarts
too: a crash loop cannot fill the backend's window.

Head of line, with room to step aside. The oldest row goes first, and a failed request
(transport, timeout, 5xx, 429) is retried with the queue waiting behind it: the backend
is what is failing, and hammering it with the next rows would not help. But a row that
cannot be settled *on its own account* steps aside, and the rows after it go on:
- a row whose delivery raised an unexpected error (a bug, an input nobody foresaw) is
  logged with its key and the error, counted (`healert_forward_errors_total{where="row"}`)
  and backs off on its own (HEALERT_BACKOFF_BASE/MAX). After `ROW_ERROR_LIMIT` such
  failures it is set aside as a dead letter with the error as its reason, but only once
  another row was delivered since its first failure: an error that strikes every row is
  the forwarder's, not the row's, and must stop the queue rather than empty it into the
  dead letters;
- a row whose send is uncertain waits for a read that tells (below).
At most `ASIDE_MAX` rows stand aside; with that many, nothing new is started until one of
them is due, so a backend that fails in a new way is not sprayed with the whole queue.
A row that stood aside is sent when it is due, after newer ones: the backend orders
events by their timestamp, not by their arrival.

Effectively once: a row is marked in flight, durably, right before its request starts,
and removed together with the remembering of its key right after the 2xx arrives. A row
still marked in flight (the agent was killed, the request timed out, the connection was
reset after the request went out, a gateway answered 502/504, the answer was too long to
read) may have reached the backend. Once the request can no longer be running, the
entity's recent events are read from the backend (`GET /friction/{entity_ref}`): if the
event is there, the row is marked delivered and never sent again; if not, it is sent
again. Two things keep a read from misleading:
- while the read fails (an error, a timeout, an answer too long or not JSON), the row is
  never resent blindly: it waits for a read that succeeds, backing off up to
  `READ_BACKOFF_MAX` (`healert_forward_awaiting_read`, /readyz's body). A backend that
  was frozen still handles the requests it queued meanwhile when it wakes. Only after
  HEALERT_FORWARD_UNCERTAIN_MAX_WAIT of failed reads (6 h by default, counted while this
  process runs) is the row sent again unverified, and counted;
- a "missing" read less than the forward timeout after the backend answered again,
  following requests that failed or timed out, is read again once that much time has
  passed before it is trusted: a backend waking from a stall may handle the read before
  the old request it had queued.
Any other failed answer (500, 503, 429...) is the backend's own and means it did not store
the event: the row is sent again after the backoff without a read. The backend stores an event in
one commit and, once that returned, only answers `{"status": "ok"}`; a 500 is its handler
raising before the commit, whose transaction then never counted. A proxy in front that
lost the backend's answer says 502 or 504, which are read first (above).
An event the read cannot show at all (no timestamp, older than the backend's window or its
500 newest or tied with the oldest of them, a backend without the read endpoint) is sent
again unchecked at once, and
counted (`healert_forward_uncertain_resends_total`). A second forwarder on the same
outbox (a rolling restart, a replay with --forward) would send the same head; an
exclusive lock file next to the database lets only one process drain it at a time.

Clocks: every wait runs on the monotonic clock. Wall-clock times stored in the outbox (a
row's in-flight mark, the last send) can only shorten a wait: one in the future counts as
now, so no clock step delays a delivery past the wait's nominal length.

Nothing ends the forwarder: no answer of the backend, no content of the key file or of
the outbox, no clock. Besides the row guard above, a last-resort guard around each step
and around the whole run logs, counts (`healert_forward_errors_total{where="loop"}`) and
backs off. Housekeeping (the outbox gauges, the dead letters' bounds) runs on its own
timer and survives its own errors too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

import httpx

from healert_webhook import backend, backend_contract, health, metrics
from healert_webhook.config import ConfigError, Settings, env
from healert_webhook.filewatch import FileWatch, signature
from healert_webhook.logs import Limiter
from healert_webhook.outbox import EXPIRED, UNDECODABLE, Outbox, Queued, forward_lock_path
from healert_webhook.records import OutboxError

log = logging.getLogger(__name__)
events_log = logging.getLogger("healert_webhook.events")
_housekeeping_log = Limiter(log, per_interval=1, interval=60.0, what="housekeeping failures")

RATE_MARGIN = 0.95
LOG_EVERY = 60.0  # seconds between repeats of a loud error while it lasts
PAUSE_POLL = 1.0  # seconds between looks for a new key while deliveries are paused
LAST_SEND = "last_send_us"  # outbox meta: when the last POST started, microseconds
READ_INTERVAL = 0.2  # seconds between reads: they are not rate limited, but not free
READ_BACKOFF_BASE, READ_BACKOFF_MAX = 1.0, 60.0  # seconds between failed reads of a row
RECENT_WINDOW_DAYS = 30.0  # what GET /friction shows: the backend's last 30 days
GAUGE_EVERY = 1.0  # seconds between refreshes of the outbox gauges
PRUNE_EVERY = 60.0  # seconds between sweeps of the dead letters' bounds
ROW_ERROR_LIMIT = 5  # unexpected failures of one row before it is set aside
ASIDE_MAX = 16  # rows standing aside at once before nothing new is started
LOOP_BACKOFF_MAX = 60.0  # seconds, after unexpected errors of the forwarder itself


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
    """The bearer key, re-read when the key file changes.

    The agent's one watcher of reloadable files (server.py) calls `reload` every second
    and on SIGHUP, as it does for the rules, the certificate and the tokens; the
    forwarder only reads `key`, and `version` when it waits for a new one. A key file that
    cannot be used any more (unreadable, not UTF-8, not a printable ASCII key) keeps the
    key in use: deliveries go on, an ERROR line says why once per change of the file, and
    `healert_api_key_invalid` is 1 until the file is fixed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key: str | None = None
        self.error: str | None = None
        self._reported: tuple[object, str] | None = None
        self._lock = threading.Lock()  # the first load and the watcher's reloads
        path = settings.api_key_file
        self._watch = FileWatch(path) if path is not None else None
        self.version = 0  # counts key changes: whoever waits for one compares it

    def load(self) -> None:
        """Read the key now (blocking); a failure keeps any key loaded before."""
        with self._lock:
            self._read()

    def reload(self, force: bool = False) -> bool:
        """Re-read the key file if it changed (blocking, cheap); True when the key did."""
        if self._watch is None:
            return False
        with self._lock:
            if not self._watch.changed(force) and self.error is None:
                return False
            before = self.key
            self._read()
            if self.key == before:
                return False
            self.version += 1
        log.info("API key file %s changed: key re-read", self.settings.api_key_file)
        return True

    def _read(self) -> None:
        try:
            key = self.settings.read_api_key()
        except ConfigError as exc:
            self._refused(exc)
            return
        self._accepted()
        self.key = key

    def _refused(self, exc: ConfigError) -> None:
        self.error = str(exc)
        metrics.API_KEY_INVALID.set(1)
        path = self.settings.api_key_file
        report = (signature(path) if path is not None else None, self.error)
        if report != self._reported:  # once per change of the file, not once a second
            self._reported = report
            kept = "keeping the key in use" if self.key else "no key is in use"
            log.error("%s; %s until the file is fixed", self.error, kept)

    def _accepted(self) -> None:
        if self.error is not None:
            log.info("API key file %s is usable again", self.settings.api_key_file)
        self.error = None
        self._reported = None
        metrics.API_KEY_INVALID.set(0)


@dataclass
class Aside:
    """A row that steps aside for a while (see the module docstring)."""

    seq: int
    key: str
    until: float = 0.0  # monotonic: when it is due again
    errors: int = 0  # unexpected errors in its delivery
    delivered_mark: int = 0  # deliveries counted when its first error came
    reads_failed: int = 0  # failed reads since its send became uncertain
    waiting_since: float | None = None  # monotonic: its first failed read in this process
    last_read_error: str | None = None
    recheck: bool = False  # a "missing" right after a stall, to be read again

    @property
    def awaits_read(self) -> bool:
        """True while it waits for GET /friction to tell whether the backend has it."""
        return self.waiting_since is not None or self.recheck


def _log_events(rows: list[Queued]) -> None:
    """One line per friction event kept without a backend: the event as a field (in JSON
    logs an object of its own, not JSON inside a string)."""
    for row in rows:
        events_log.info("friction event", extra={"key": row.key, "rule": row.rule,
                                                 "event": row.event})


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
        self._loop_failures = 0
        self._last_error: str | None = None
        self._last_delivery: float | None = None
        self._delivered = 0
        self._last_loud = -1e9
        self._probe_at = 0.0
        self._paused_key = 0  # the key's version when deliveries paused
        # Paused on a refused key or URL: what decides whether a POST may start. Not the
        # shown state, which a reconcile or a loop error writes meanwhile.
        self._paused = False
        self._pause_reason: str | None = None
        self._stop: asyncio.Event | None = None
        self._reads_missing = False  # the backend has no read endpoint: resend blindly
        self._next_read = 0.0
        self._aside: dict[int, Aside] = {}
        self._stalled = False  # the last request to the backend failed or timed out
        self._answering_since = -1e18  # monotonic: when it answered again after that

    # -- public ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """State for /readyz's body (deliveries never make the agent unready)."""
        state, reason = self._state, self._reason
        if self._paused:
            state, reason = "paused", self._pause_reason
        note = self._aside_note()
        if note:
            reason = f"{reason}; {note}" if reason else note
        return {
            "state": state,
            "reason": reason,
            "backend": backend.shown_url(self.settings.backend_url),
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
        chores_stop = asyncio.Event()
        chores = asyncio.create_task(self._housekeeping(chores_stop), name="outbox-chores")
        try:
            while not stop.is_set():
                try:
                    if self.settings.backend_url is None:
                        await self._run_embedded(stop)
                    else:
                        await self._run_backend(stop)
                except Exception as exc:  # the last resort: the forwarder never ends
                    await self._loop_failed(exc, stop)
        finally:
            chores_stop.set()
            await asyncio.wait({chores}, timeout=GAUGE_EVERY * 5)
            self.outbox.remove_listener(notify)
            metrics.FORWARD_PAUSED.set(0)
            self._paused = False
            self._state = "stopped"

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Refresh the outbox gauges at once and every second, and keep the dead letters
        within their bounds every minute, until `stop`.

        On their own clock, not the delivery loop's: that loop may wait for a long time
        (a health check the backend does not answer, the lock another process holds, a
        backoff, a pause until the next probe), and the queue's depth and age are what
        monitoring needs most exactly then. Events stored by other processes show too.
        """
        prune_at = 0.0
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.outbox.refresh_metrics, force=True)
                if time.monotonic() >= prune_at:
                    prune_at = time.monotonic() + PRUNE_EVERY
                    await self._prune_dead()
            except Exception as exc:  # a chore's failure must not end the chores
                _housekeeping_log.error("outbox housekeeping failed: %s: %s",
                                        type(exc).__name__, exc)
            await self._sleep(stop, GAUGE_EVERY)

    async def _prune_dead(self) -> None:
        """Apply the dead letters' age and count bounds; one log line for what went."""
        days = self.settings.dead_letter_max_age_days
        bound = self.settings.dead_letter_max_events
        pruned = await asyncio.to_thread(self.outbox.prune_dead, days, bound)
        for reason, count in pruned.items():
            if count:
                metrics.DEAD_LETTERS_PRUNED.labels(reason).inc(count)
        if any(pruned.values()):
            log.info("dead letters pruned: %d older than %g days, %d over the bound of %d "
                     "(oldest first); their keys still keep a late duplicate out of the "
                     "queue for the dedup window", pruned["age"], days, pruned["count"],
                     bound)
            await asyncio.to_thread(self.outbox.refresh_metrics, force=True)

    # -- embedded mode -----------------------------------------------------------------

    async def _run_embedded(self, stop: asyncio.Event) -> None:
        self._state, self._reason = "embedded", "no backend URL: events are logged and kept"
        log.warning(f"no {env('backend_url')}: friction events stay in the outbox %s and are "
                    "written to the log (logger healert_webhook.events); they are delivered "
                    "once a backend URL is configured", self.outbox.path)
        logged = await self._outbox_call(self.outbox.get_meta, "logged_seq")
        while not stop.is_set():
            rows = await self._outbox_call(self.outbox.head, 500, logged)
            if rows:
                # formatting and writing 500 lines is tens of milliseconds: off the loop
                await asyncio.to_thread(_log_events, rows)
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
                await self._start(client)
                while not stop.is_set():
                    try:
                        await self._step(client, stop)
                        self._loop_failures = 0
                    except Exception as exc:  # the last resort: the loop goes on
                        await self._loop_failed(exc, stop)
        finally:
            lock.close()

    async def _start(self, client: httpx.AsyncClient) -> None:
        """Say how the backend answers, list the rows in flight, restore the pacer."""
        report = await backend.check_health(self.settings, client)
        for warning in health.warnings(report):
            log.warning("%s", warning)
        if report.reachable:
            log.info("backend %s: status %s, version %s, auth %s", report.url,
                     report.status, report.version, report.auth)
        if report.http_status is None:
            self._request_failed()
        await self._recover()
        await self._restore_pacer()
        self._state = "idle"

    async def _lock(self, stop: asyncio.Event) -> IO[bytes] | None:
        """Hold an exclusive lock so one process drains this outbox (see module docstring)."""
        path = forward_lock_path(self.outbox.path)
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
        every start would fill it. A last send stored in the future (the clock went back)
        waits one interval, not until then.
        """
        last = await self._outbox_call(self.outbox.get_meta, LAST_SEND) / 1e6
        self.pacer.resume(time.time() - last, time.monotonic())

    async def _step(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        row = await self._next_row(stop)
        if row is None:
            return
        try:
            await self._handle(client, row, stop)
        except Exception as exc:  # one row must not end the forwarder (module docstring)
            await self._row_failed(row, exc)

    async def _next_row(self, stop: asyncio.Event) -> Queued | None:
        """The row to handle now: one standing aside that is due, else the oldest of the
        others; None after waiting for work (or for the first one aside to be due)."""
        now = time.monotonic()
        for aside in sorted((a for a in self._aside.values() if a.until <= now),
                            key=lambda a: a.seq):
            row: Queued | None = await self._outbox_call(self.outbox.get, aside.seq)
            if row is not None:
                return row
            self._forget(aside.seq)  # gone meanwhile: purged or dead-lettered by a command
        if len(self._aside) < ASIDE_MAX:
            rows: list[Queued] = await self._outbox_call(self.outbox.head, 1, 0,
                                                          tuple(self._aside))
            if rows:
                return rows[0]
        if not self._paused:  # paused stays paused until a probe or a new key
            self._state, self._reason = ("waiting" if self._aside else "idle"), None
        due = min((a.until for a in self._aside.values()), default=None)
        await self._wait_for_work(stop, None if due is None else due - now)
        return None

    async def _handle(self, client: httpx.AsyncClient, row: Queued,
                      stop: asyncio.Event) -> None:
        if UNDECODABLE in row.event:
            await self._dead_letter(row, None, "the stored event is not valid JSON "
                                    f"({row.event[UNDECODABLE]})", None, "undecodable")
            return
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
        if self._paused and not await self._wait_paused(stop):
            return
        await self._sleep(stop, self.pacer.delay(time.monotonic()))
        if stop.is_set():
            return
        await self._send_row(client, row, body, stop)

    async def _send_row(self, client: httpx.AsyncClient, row: Queued, body: dict[str, Any],
                        stop: asyncio.Event) -> None:
        if not await self._outbox_call(self.outbox.mark_in_flight, row.seq, LAST_SEND):
            # held across a wait (a pause, the pacer) while an operator purged it
            log.info("friction event key=%s is no longer queued (purged meanwhile): not "
                     "sent", row.key)
            self._forget(row.seq)
            return
        self.pacer.take(time.monotonic())
        outcome = await self._post(client, body)
        metrics.FORWARD_ATTEMPTS.labels(outcome.label).inc()
        if outcome.kind == "retry":
            self._request_failed()
        else:
            self._answered()
        if outcome.kind == "delivered":
            log.info("friction event delivered", extra={
                "key": row.key, "rule": row.rule, "entity": body.get("entity_ref"),
                "status": outcome.status, "answer": outcome.answer or ""})
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
        self._forget(row.seq)
        self._failures = 0
        self._delivered += 1
        self._last_delivery = time.time()
        self._state, self._reason = "delivering", None

    async def _dead_letter(self, row: Queued, status: int | None, reason: str,
                           answer: str | None, label: str) -> None:
        await self._outbox_call(self.outbox.dead_letter, row.seq, status=status,
                                reason=reason, answer=answer)
        self._forget(row.seq)
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

    # -- what the backend's answers say about it ------------------------------------------

    def _request_failed(self) -> None:
        """A request failed or timed out: the backend may hold requests it has not
        handled yet, so a "missing" soon after it answers again is read twice."""
        self._stalled = True

    def _answered(self) -> None:
        """An answer arrived: the first after a stall starts the time a "missing" needs
        before it is trusted."""
        if self._stalled:
            self._stalled = False
            self._answering_since = time.monotonic()

    def _recheck_delay(self) -> float:
        return self.settings.forward_timeout

    # -- reconciling a send whose answer was lost ---------------------------------------

    async def _reconcile(self, client: httpx.AsyncClient, row: Queued,
                         body: dict[str, Any], stop: asyncio.Event) -> bool:
        """Settle a row whose last request may have reached the backend unanswered.

        Once the request can no longer be running (the forward timeout has passed since
        it started; a start stored in the future counts as now), read the entity's
        recent events at the backend and settle on what they say (`_settle`). True when
        the row is to be sent now; False when it was settled or steps aside.
        """
        assert row.in_flight is not None
        if self._reads_missing:
            return self._resend_blind(row, "the backend has no GET /friction")
        self._state, self._reason = "reconciling", f"checking whether the backend has {row.key}"
        timeout = self.settings.forward_timeout
        started = min(row.in_flight, time.time())
        await self._sleep(stop, min(timeout, started + timeout - time.time()))
        await self._sleep(stop, min(READ_INTERVAL, self._next_read - time.monotonic()))
        if stop.is_set():
            return False
        self._next_read = time.monotonic() + READ_INTERVAL
        read_at = time.monotonic()
        finding = await backend.find_event(
            client, self.settings.backend_url or "", body, timeout, RECENT_WINDOW_DAYS)
        if finding.asked:
            metrics.FORWARD_RECONCILE_READS.labels(finding.verdict).inc()
        return await self._settle(row, finding, read_at, stop)

    async def _settle(self, row: Queued, finding: backend.Finding, read_at: float,
                      stop: asyncio.Event) -> bool:
        if finding.verdict == "error":
            self._request_failed()
            return self._await_read(row, finding.detail)
        if finding.asked:
            self._answered()  # now: a read sent during a stall may be answered only after it
        if finding.verdict == "found":
            metrics.FORWARD_RECONCILED.labels("delivered").inc()
            log.info("friction event key=%s: the backend already has it (its answer was "
                     "lost); marked delivered, not sent again", row.key)
            await self._delivered_ok(row, stop)
            return False
        if finding.verdict == "missing":
            if read_at - self._answering_since < self._recheck_delay():
                return self._recheck(row)
            self._read_settled(row.seq)
            metrics.FORWARD_RECONCILED.labels("resent").inc()
            log.info("friction event key=%s: the backend does not have it; sending it again",
                     row.key)
            return True
        self._read_settled(row.seq)
        if finding.verdict == "no_endpoint":
            self._reads_missing = True
            log.warning("the backend answers no GET /friction/{entity_ref} (%s): events whose "
                        "answer was lost are sent again without checking, and may arrive "
                        "twice; upgrade the backend to get effectively-once delivery",
                        finding.detail)
            return self._resend_blind(row, finding.detail)
        metrics.FORWARD_RECONCILED.labels("unverifiable").inc()
        return self._resend_blind(row, finding.detail)

    def _await_read(self, row: Queued, detail: str) -> bool:
        """The read failed: the row waits for one that succeeds, backing off, and is sent
        again unverified only after HEALERT_FORWARD_UNCERTAIN_MAX_WAIT of this."""
        aside = self._aside_for(row)
        now = time.monotonic()
        aside.reads_failed += 1
        aside.last_read_error = detail
        aside.recheck = False
        if aside.waiting_since is None:
            aside.waiting_since = now
        waited = now - aside.waiting_since
        limit = self.settings.forward_uncertain_max_wait
        if waited >= limit:
            self._read_settled(row.seq)
            metrics.FORWARD_RECONCILED.labels("unverifiable").inc()
            return self._resend_blind(row, f"GET /friction kept failing for {waited:.0f}s "
                                      f"(last: {detail})")
        delay = backoff_delay(aside.reads_failed, READ_BACKOFF_BASE, READ_BACKOFF_MAX)
        aside.until = now + delay
        if aside.reads_failed & (aside.reads_failed - 1) == 0:  # 1st, 2nd, 4th, 8th...
            log.warning("friction event key=%s may have reached the backend, and reading "
                        "whether it did failed (%s, %d time(s)): it is not sent again until "
                        "a read tells; next read in %.1fs, sent again unverified after "
                        "%.0fs more of failed reads", row.key, detail, aside.reads_failed,
                        delay, limit - waited)
        self._update_aside_gauge()
        return False

    def _recheck(self, row: Queued) -> bool:
        """A "missing" right after a stall: read again once the backend has been
        answering for the forward timeout (it may still handle the old request)."""
        aside = self._aside_for(row)
        aside.recheck = True
        aside.until = max(time.monotonic(), self._answering_since + self._recheck_delay())
        log.info("friction event key=%s: the backend does not show it, but it answers again "
                 "only since a stall; read again in %.1fs before it is sent again", row.key,
                 aside.until - time.monotonic())
        self._update_aside_gauge()
        return False

    @staticmethod
    def _resend_blind(row: Queued, why: str) -> bool:
        metrics.FORWARD_UNCERTAIN_RESENDS.inc()
        log.warning("friction event key=%s may have reached the backend, and it cannot be "
                    "checked (%s): sending it again, a possible duplicate", row.key, why)
        return True

    # -- rows standing aside ---------------------------------------------------------------

    def _aside_for(self, row: Queued) -> Aside:
        aside = self._aside.get(row.seq)
        if aside is None:
            aside = self._aside[row.seq] = Aside(row.seq, row.key)
        return aside

    def _forget(self, seq: int) -> None:
        """The row is settled (delivered, a dead letter, gone): nothing to remember."""
        if self._aside.pop(seq, None) is not None:
            self._update_aside_gauge()

    def _read_settled(self, seq: int) -> None:
        """The row no longer waits for a read; its unexpected errors still count."""
        aside = self._aside.get(seq)
        if aside is None:
            return
        aside.waiting_since, aside.recheck, aside.reads_failed = None, False, 0
        aside.last_read_error = None
        if not aside.errors:
            del self._aside[seq]
        self._update_aside_gauge()

    def _update_aside_gauge(self) -> None:
        metrics.FORWARD_AWAITING_READ.set(sum(a.awaits_read for a in self._aside.values()))

    def _aside_note(self) -> str | None:
        """What the rows standing aside wait for, for /readyz's body."""
        reads = [a for a in self._aside.values() if a.awaits_read]
        errors = [a for a in self._aside.values() if a.errors]
        parts = []
        if reads:
            last = next((a.last_read_error for a in reads if a.last_read_error), None)
            parts.append(f"{len(reads)} event(s) whose answer was lost wait for GET "
                         "/friction to tell whether the backend has them"
                         + (f" (last read: {last})" if last else ""))
        if errors:
            parts.append(f"{len(errors)} event(s) back off after unexpected errors")
        return "; ".join(parts) or None

    async def _row_failed(self, row: Queued, exc: Exception) -> None:
        """An unexpected error on one row: it backs off on its own, and is set aside as a
        dead letter after ROW_ERROR_LIMIT of them once other rows were delivered."""
        aside = self._aside_for(row)
        if aside.errors == 0:
            aside.delivered_mark = self._delivered
        aside.errors += 1
        metrics.FORWARD_ERRORS.labels("row").inc()
        what = backend.redact_urls(f"{type(exc).__name__}: {exc}")[:300]
        if aside.errors == 1:
            log.error("unexpected error delivering friction event key=%s: %s; it steps "
                      "aside and is retried (a dead letter after %d such failures)",
                      row.key, what, ROW_ERROR_LIMIT, exc_info=exc)
        else:
            log.error("unexpected error delivering friction event key=%s again (%d times): "
                      "%s", row.key, aside.errors, what)
        if aside.errors >= ROW_ERROR_LIMIT and self._delivered > aside.delivered_mark:
            await self._dead_letter(row, None, f"unexpected error, {aside.errors} times: "
                                    f"{what}", None, "error")
            return
        delay = backoff_delay(aside.errors, self.settings.backoff_base,
                              self.settings.backoff_max)
        aside.until = time.monotonic() + delay
        self._update_aside_gauge()

    async def _loop_failed(self, exc: Exception, stop: asyncio.Event) -> None:
        """The last resort: an error outside any row's delivery. Log, count, back off."""
        self._loop_failures += 1
        metrics.FORWARD_ERRORS.labels("loop").inc()
        delay = backoff_delay(self._loop_failures, self.settings.backoff_base,
                              min(LOOP_BACKOFF_MAX, self.settings.backoff_max))
        what = backend.redact_urls(f"{type(exc).__name__}: {exc}")[:300]
        self._state = "backoff"
        self._reason = f"unexpected error in the forwarder ({what}); retrying in {delay:.1f}s"
        now = time.monotonic()
        if now - self._last_loud >= LOG_EVERY:
            self._last_loud = now
            log.error("unexpected error in the forwarder: %s; it goes on in %.1fs", what,
                      delay, exc_info=exc)
        await self._sleep(stop, delay)

    # -- pause on a refused key ---------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._paused:
            self._last_loud = -1e9
        if self.keys.error:
            reason = f"{reason} ({self.keys.error})"
        self._paused, self._pause_reason = True, reason
        self._state, self._reason = "paused", reason
        metrics.FORWARD_PAUSED.set(1)
        self._loud(f"deliveries paused: {reason}; events stay queued")
        self._probe_at = time.monotonic() + self.probe_interval
        self._paused_key = self.keys.version

    async def _wait_paused(self, stop: asyncio.Event) -> bool:
        """Wait until the key file changes or a probe is due; False when stopping."""
        while not stop.is_set():
            if self.keys.version != self._paused_key:  # the watcher read a new key
                log.info("API key file changed: resuming deliveries")
                break
            if time.monotonic() >= self._probe_at:
                log.info("deliveries paused: probing the backend with the oldest event")
                break
            self._loud(f"deliveries paused: {self._pause_reason}; events stay queued")
            await self._sleep(stop, min(PAUSE_POLL, self.probe_interval))
        else:
            return False
        metrics.FORWARD_PAUSED.set(0)
        self._paused = False
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

    async def _wait_for_work(self, stop: asyncio.Event, within: float | None = None) -> None:
        """Until new rows are stored, `stop`, the poll interval or `within` seconds."""
        timeout = self.poll_interval if within is None else max(0.0, min(
            within, self.poll_interval))
        wake = self._wake
        if wake is None:
            await self._sleep(stop, timeout)
            return
        wake.clear()
        stop_task = asyncio.ensure_future(stop.wait())
        wake_task = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({stop_task, wake_task}, timeout=timeout,
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
