"""The durable queue between detection and delivery: one SQLite file in WAL mode
(schema.py opens it; files.py holds its locks).

Tables:
  queue        friction events waiting, oldest first (seq); key UNIQUE, so a resent batch
               or an event seen by two sources is stored once
  delivered    keys delivered within the dedup window: a late duplicate is not queued again
               (the keys of pruned dead letters are kept here too, for the same window)
  dead         dead letters (the backend or the contract refused them); their keys count as
               seen too, and `retry_dead` moves them back to the queue. Bounded by age and
               count (`prune_dead`), oldest first
  checkpoints  tail positions, written in the same transaction as the rows they produced
  meta         small key/value state (queue depth counter, embedded-mode log position)

Every public method is thread-safe (one connection behind a lock) and blocking: call it
from a worker thread (`asyncio.to_thread`), never on the event loop. Several processes
(the agent, `healert-webhook outbox ...`, `replay --forward`) may open the same file; WAL
and `busy_timeout` let them take turns.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from healert_webhook import backend_contract, metrics
from healert_webhook.backend_contract import ANSWER_MAX
from healert_webhook.config import Settings, env
from healert_webhook.logs import Limiter
from healert_webhook.outbox.files import hold, identity, wal_path
from healert_webhook.outbox.recent import RecentKeys
from healert_webhook.outbox.schema import error_reason, open_database
from healert_webhook.records import Checkpoint, Friction, OutboxError, OutboxFull, StoreResult

log = logging.getLogger(__name__)
_replaced_log = Limiter(log, per_interval=1, interval=60.0, what="refused outbox writes")

UNDECODABLE = "_undecodable"  # the event of a row whose stored bytes are not a JSON object
PRUNE_BATCH = 500  # dead letters deleted per transaction: stores wait for one batch at most
EXPIRED = "expired: older than the backend's retention ({:g} days), so it would never count"
EXPIRE_EVERY = 60.0  # seconds between sweeps of expired delivered keys



@dataclass(frozen=True)
class Queued:
    """One friction event waiting for delivery."""

    seq: int
    key: str
    rule: str
    event: dict[str, Any]
    created: float
    attempts: int
    last_error: str | None
    in_flight: float | None  # when a request for it was last started without a known answer


@dataclass(frozen=True)
class DeadLetter:
    """One friction event parked because it was refused."""

    key: str
    rule: str
    event: dict[str, Any]
    created: float
    dead_at: float
    status: int | None  # the backend's HTTP status; None when refused before sending
    reason: str
    answer: str | None


@dataclass(frozen=True)
class OutboxStats:
    """Counts for metrics, `status()` and `outbox status`."""

    depth: int
    oldest_created: float | None
    in_flight: int
    dead: int
    delivered_remembered: int


def _dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def _loads(blob: bytes | str) -> dict[str, Any]:
    """A stored event; one another program stored as anything but JSON is not an error here
    (it would stop every reader of the queue) but an event marked `UNDECODABLE`."""
    try:
        value = orjson.loads(blob)
    except (orjson.JSONDecodeError, TypeError) as exc:
        return {UNDECODABLE: str(exc)[:200]}
    return value if isinstance(value, dict) else {"_invalid": value}


class Outbox:
    """The SQLite outbox (see the module docstring)."""

    def __init__(self, path: Path, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.path = Path(path)
        self.max_queued = settings.outbox_max_events
        self.dedup_window = settings.dedup_window
        self.retention_days = settings.backend_retention_days
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._last_expire = -EXPIRE_EVERY  # monotonic: a clock step neither skips nor repeats
        self._last_metrics = 0.0
        self._failure: str | None = None
        self.recent = RecentKeys(self.dedup_window)
        self._full = False  # the last store was refused for want of room
        self._full_depth = 0  # the queue's depth when it was refused
        self._holder = hold(self.path)
        try:
            self._conn = open_database(self.path)
        except BaseException:
            self._holder.close()
            raise
        self._identity = self._files()

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        """The outbox in the settings' state directory (created 0700 if missing)."""
        try:
            settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"state directory {settings.state_dir}: "
                              f"{exc.strerror or exc}", "io") from exc
        return cls(settings.outbox_path, settings)

    # -- plumbing ------------------------------------------------------------------------

    def _files(self) -> tuple[tuple[int, int] | None, ...]:
        """Who the database and its WAL are: commits live in the WAL until a checkpoint,
        so either file replaced under an open connection loses what it takes."""
        return identity(self.path), identity(wal_path(self.path))

    def _check_identity(self) -> None:
        """Refuse to write when the file at our path is no longer the one we opened.

        Moved aside or deleted while the agent runs (a purge, an `rm -rf` of the state
        directory), the open database would take writes that nobody will ever read:
        every batch answered 200 from then on would be lost at the next restart.
        """
        if self._files() != self._identity:
            self._failure = "replaced"
            _replaced_log.error(
                "outbox file %s (or its -wal) is no longer the one this process opened "
                "(moved, deleted or replaced while running): refusing to store anything; "
                "restart the agent to open the file now at that path", self.path)
            raise OutboxError(f"outbox file {self.path} was moved, deleted or replaced while "
                              "the agent ran", "replaced")

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: all of it commits, or OutboxError."""
        with self._lock:
            self._check_identity()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
                reason = error_reason(exc)
                self._failure = reason
                metrics.OUTBOX_WRITE_ERRORS.labels(reason).inc()
                log.error("outbox %s failed (%s), nothing of it was stored: %s",
                          what, reason, exc)
                raise OutboxError(f"outbox {what} failed: {exc}", reason) from exc
            self._failure = None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox read failed: {exc}", error_reason(exc)) from exc

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the storing thread) after every commit that queued rows."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling `callback`."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # a listener's bug must not fail a stored batch
                log.exception("outbox listener failed")

    # -- sources -------------------------------------------------------------------------

    def store(self, frictions: Sequence[Friction],
              checkpoint: Checkpoint | None = None) -> StoreResult:
        """Queue `frictions` and save `checkpoint` in ONE transaction, or raise OutboxError.

        Keys already queued, delivered within the dedup window, or dead-lettered are
        counted as duplicates and not queued again. Blocking; thread-safe.
        """
        if not frictions and checkpoint is None:
            return StoreResult(0, 0)
        if checkpoint is None:
            resent = self.resent(frictions)
            if resent is not None:
                return resent
        now = time.time()
        horizon = now - self.dedup_window
        self._check_identity()  # a resend too: its rows are in the file we opened only
        if checkpoint is None and self._all_known([f.key for f in frictions], horizon):
            # a resent batch: nothing to write, so no write lock and no commit
            return StoreResult(0, len(frictions))
        expired = {f.key for f in frictions
                   if backend_contract.older_than(f.event, self.retention_days)}
        rows = [(f.key, f.rule, _dumps(f.event), now, f.key, horizon, f.key)
                for f in frictions]
        with self._transaction("store") as conn:
            keys: set[str] = set()
            aside = 0
            for row in rows:
                if row[0] in expired:
                    aside += self._set_aside(conn, row, now)
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO queue (key, rule, event, created) "
                    "SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM delivered WHERE key = ? AND delivered >= ?) "
                    "AND NOT EXISTS (SELECT 1 FROM dead WHERE key = ?)", row)
                if cur.rowcount > 0:
                    keys.add(row[0])
            if keys:
                self._check_room(conn, len(keys))
            if checkpoint is not None:
                self._save_checkpoint(conn, checkpoint, now)
        self.recent.add(row[0] for row in rows)  # each is queued, delivered or dead now
        if aside:
            metrics.DEAD_LETTERED.labels("expired").inc(aside)
        if keys:
            self._room_made()  # it fitted: whatever was refused before may fit now too
            self._notify()  # the forwarder wakes; its gauge task refreshes once a second
        return StoreResult(len(keys), len(frictions) - len(keys) - aside, frozenset(keys),
                           aside)

    def resent(self, frictions: Sequence[Friction]) -> StoreResult | None:
        """What `store` would do with a batch every key of which this process committed
        within the dedup window (recent.py): count them as duplicates, write nothing. None
        for any other batch, or while the file is not the one opened. No lock, no read of
        the database, two stats: cheap enough for the event loop."""
        if not self.recent.hold_all([f.key for f in frictions]):
            return None
        if self._failure is not None or self._files() != self._identity:
            return None  # `store` says what is wrong
        return StoreResult(0, len(frictions))

    def _all_known(self, keys: list[str], horizon: float) -> bool:
        """True when every key is queued, delivered within the window, or a dead letter."""
        wanted = set(keys)
        if len(wanted) > 300:  # one statement's parameters: the write path decides
            return False
        marks = ",".join("?" * len(wanted))
        rows = self._read(
            f"SELECT key FROM queue WHERE key IN ({marks}) UNION "  # noqa: S608
            f"SELECT key FROM delivered WHERE key IN ({marks}) AND delivered >= ? UNION "
            f"SELECT key FROM dead WHERE key IN ({marks})",
            [*wanted, *wanted, horizon, *wanted])
        return len(rows) == len(wanted)

    def _set_aside(self, conn: sqlite3.Connection, row: tuple[Any, ...], now: float) -> int:
        """Park an event the backend would delete unseen (older than its retention): it
        would spend a request of the rate limit and never count. 1 if parked now."""
        key, rule, blob, created, _key, horizon, _key2 = row
        cur = conn.execute(
            "INSERT OR IGNORE INTO dead (key, rule, event, created, dead_at, status, reason) "
            "SELECT ?, ?, ?, ?, ?, NULL, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM queue WHERE key = ?) AND NOT EXISTS "
            "(SELECT 1 FROM delivered WHERE key = ? AND delivered >= ?)",
            (key, rule, blob, created, now, EXPIRED.format(self.retention_days), key, key,
             horizon))
        return max(cur.rowcount, 0)

    def _room_made(self) -> None:
        if self._full:
            self._full = False
            metrics.OUTBOX_FULL.set(0)

    def _check_room(self, conn: sqlite3.Connection, added: int) -> None:
        """Refuse (and so roll back) a store that would take the queue over its bound."""
        depth = conn.execute("SELECT value FROM meta WHERE name = 'depth'").fetchone()[0]
        if depth > self.max_queued:
            self._full = True
            self._full_depth = depth - added
            metrics.OUTBOX_FULL.set(1)
            raise OutboxFull(
                f"outbox full: {depth - added} queued and this store would add {added}, over "
                f"{env('outbox_max_events')}={self.max_queued}; nothing of it was stored "
                "(deliveries make room; raise the bound if the backend is down for long)",
                "full")

    @staticmethod
    def _save_checkpoint(conn: sqlite3.Connection, cp: Checkpoint, now: float) -> None:
        conn.execute(
            'INSERT INTO checkpoints (source, path, dev, ino, "offset", fingerprint, updated) '
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
            'path = excluded.path, dev = excluded.dev, ino = excluded.ino, '
            '"offset" = excluded."offset", fingerprint = excluded.fingerprint, '
            "updated = excluded.updated",
            (cp.source, cp.path, cp.dev, cp.ino, cp.offset, cp.fingerprint, now))

    def load_checkpoint(self, source: str) -> Checkpoint | None:
        """The last checkpoint stored for `source`, or None."""
        rows = self._read('SELECT source, path, dev, ino, "offset", fingerprint, updated '
                          "FROM checkpoints WHERE source = ?", (source,))
        return Checkpoint(*rows[0]) if rows else None

    def writable(self) -> str | None:
        """None when the outbox can take writes, else why not (for /readyz)."""
        if self._files() != self._identity:
            return (f"outbox file {self.path} (or its -wal) was moved, deleted or replaced: "
                    "restart the agent")
        if self._failure is not None:
            return f"outbox writes failing: {self._failure}"
        if not os.access(self.path.parent, os.W_OK):
            return f"outbox directory {self.path.parent} is not writable"
        depth = self.get_meta("depth")
        if self._full and depth < self._full_depth:  # room was made (by any process)
            self._room_made()
        if self._full or depth >= self.max_queued:
            return (f"outbox full ({depth} queued, {env('outbox_max_events')}="
                    f"{self.max_queued}): batches are refused until deliveries make room")
        return None

    # -- forwarder -----------------------------------------------------------------------

    def head(self, limit: int = 1, after: int = 0, skip: Sequence[int] = ()) -> list[Queued]:
        """The oldest queued events (seq > `after`, none of `skip`), oldest first."""
        skip = list(skip)[:500]  # SQLite caps the parameters of a statement
        marks = ",".join("?" * len(skip))  # placeholders only: the values are parameters
        sql = ("SELECT seq, key, rule, event, created, attempts, last_error, "  # noqa: S608
               f"in_flight FROM queue WHERE seq > ? AND seq NOT IN ({marks}) "
               "ORDER BY seq LIMIT ?")
        rows = self._read(sql, (after, *skip, limit))
        return [Queued(seq, key, rule, _loads(blob), created, attempts, err, flight)
                for seq, key, rule, blob, created, attempts, err, flight in rows]

    def get(self, seq: int) -> Queued | None:
        """The queued event `seq`, or None when it is no longer queued."""
        rows = self._read(
            "SELECT seq, key, rule, event, created, attempts, last_error, in_flight "
            "FROM queue WHERE seq = ?", (seq,))
        return next((Queued(s, key, rule, _loads(blob), created, attempts, err, flight)
                     for s, key, rule, blob, created, attempts, err, flight in rows), None)

    def in_flight(self) -> list[Queued]:
        """Queued events whose last request started but never got an answer."""
        rows = self._read(
            "SELECT seq, key, rule, event, created, attempts, last_error, in_flight "
            "FROM queue WHERE in_flight IS NOT NULL ORDER BY seq")
        return [Queued(seq, key, rule, _loads(blob), created, attempts, err, flight)
                for seq, key, rule, blob, created, attempts, err, flight in rows]

    def mark_in_flight(self, seq: int, started_meta: str | None = None) -> bool:
        """Record, durably, that a request for `seq` is about to start (and, with
        `started_meta`, when: in microseconds under that name, in the same commit).
        False when `seq` is no longer queued (an operator purged it): no request starts."""
        now = time.time()
        with self._transaction("mark in flight") as conn:
            cur = conn.execute("UPDATE queue SET in_flight = ?, attempts = attempts + 1 "
                               "WHERE seq = ?", (now, seq))
            if cur.rowcount != 1:
                return False
            if started_meta is not None:
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                             (started_meta, int(now * 1e6)))
        return True

    def mark_delivered(self, seq: int, key: str) -> None:
        """The backend accepted `seq`: remember its key and unqueue it, in one transaction."""
        now = time.time()
        with self._transaction("mark delivered") as conn:
            conn.execute("INSERT OR REPLACE INTO delivered (key, delivered) VALUES (?, ?)",
                         (key, now))
            conn.execute("DELETE FROM queue WHERE seq = ?", (seq,))
            self._room_made()
            if time.monotonic() - self._last_expire >= EXPIRE_EVERY:
                conn.execute("DELETE FROM delivered WHERE delivered < ?",
                             (now - self.dedup_window,))
                self._last_expire = time.monotonic()

    def mark_failed(self, seq: int, error: str, *, not_taken: bool) -> None:
        """A request for `seq` failed; it stays queued. `not_taken`: certain the backend
        did not take it (it answered, or the connection failed), so the in-flight mark is
        cleared; otherwise it stays, and the next send may be a duplicate."""
        with self._transaction("mark failed") as conn:
            if not_taken:
                conn.execute("UPDATE queue SET last_error = ?, in_flight = NULL WHERE seq = ?",
                             (error[:ANSWER_MAX], seq))
            else:
                conn.execute("UPDATE queue SET last_error = ? WHERE seq = ?",
                             (error[:ANSWER_MAX], seq))

    def dead_letter(self, seq: int, *, status: int | None, reason: str,
                    answer: str | None = None) -> bool:
        """Move `seq` from the queue to the dead letters; False if it was no longer queued."""
        now = time.time()
        with self._transaction("dead letter") as conn:
            row = conn.execute("SELECT key, rule, event, created FROM queue WHERE seq = ?",
                               (seq,)).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO dead (key, rule, event, created, dead_at, status, "
                "reason, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, now, status, reason[:ANSWER_MAX],
                 None if answer is None else answer[:ANSWER_MAX]))
            conn.execute("DELETE FROM queue WHERE seq = ?", (seq,))
        return True

    def prune_dead(self, max_age_days: float, max_count: int) -> dict[str, int]:
        """Delete dead letters older than `max_age_days` and, oldest first, those over
        `max_count`; return how many for each reason ("age", "count").

        Each key goes to the delivered keys in the same transaction, so a late duplicate
        of a pruned event is still not queued for the dedup window. A few thousand at a
        time, so a store waits for one small transaction at most. Blocking.
        """
        pruned = {"age": 0, "count": 0}
        horizon = time.time() - max_age_days * 86_400.0
        while True:
            done = self._prune_batch("SELECT key FROM dead WHERE dead_at < ? "
                                     "ORDER BY dead_at, key LIMIT ?", (horizon, PRUNE_BATCH))
            pruned["age"] += done
            if done < PRUNE_BATCH:
                break
        over = self._read("SELECT count(*) FROM dead")[0][0] - max_count
        while over > 0:
            done = self._prune_batch(
                "SELECT key FROM dead ORDER BY dead_at, key LIMIT ?", (min(over, PRUNE_BATCH),))
            pruned["count"] += done
            over -= done
            if done == 0:  # another process emptied them meanwhile
                break
        return pruned

    def _prune_batch(self, select: str, params: Sequence[Any]) -> int:
        now = time.time()
        with self._transaction("prune dead letters") as conn:
            keys = conn.execute(select, params).fetchall()
            conn.executemany("INSERT OR REPLACE INTO delivered (key, delivered) VALUES (?, ?)",
                             [(key, now) for (key,) in keys])
            conn.executemany("DELETE FROM dead WHERE key = ?", keys)
        return len(keys)

    # -- operators -----------------------------------------------------------------------

    def stats(self, *, full: bool = True) -> OutboxStats:
        """Depth, oldest event, dead letters, and with `full` the costlier counts of rows
        in flight and remembered delivered keys (-1 without)."""
        with self._lock:
            try:
                conn = self._conn
                depth = conn.execute("SELECT value FROM meta WHERE name = 'depth'").fetchone()[0]
                oldest = conn.execute(
                    "SELECT created FROM queue ORDER BY seq LIMIT 1").fetchone()
                dead = conn.execute("SELECT count(*) FROM dead").fetchone()[0]
                flight = seen = -1
                if full:
                    flight = conn.execute(
                        "SELECT count(*) FROM queue WHERE in_flight IS NOT NULL").fetchone()[0]
                    seen = conn.execute("SELECT count(*) FROM delivered").fetchone()[0]
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox read failed: {exc}", error_reason(exc)) from exc
        return OutboxStats(depth, oldest[0] if oldest else None, flight, dead, seen)

    def refresh_metrics(self, *, force: bool = False) -> OutboxStats | None:
        """Update the outbox gauges, at most once a second unless `force`; never raises.

        Three indexed lookups (`stats` without its costlier counts)."""
        now = time.monotonic()
        if not force and now - self._last_metrics < 1.0:
            return None
        self._last_metrics = now
        try:
            stats = self.stats(full=False)
        except OutboxError as exc:
            log.warning("outbox metrics not updated: %s", exc)
            return None
        metrics.OUTBOX_DEPTH.set(stats.depth)
        if self._full and stats.depth < self._full_depth:  # room was made (by any process)
            self._room_made()
        oldest = stats.oldest_created
        metrics.OUTBOX_OLDEST_AGE.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        metrics.DEAD_LETTERS.set(stats.dead)
        return stats

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        rows = self._read("SELECT key, rule, event, created, dead_at, status, reason, answer "
                          "FROM dead ORDER BY dead_at, key LIMIT ?", (limit,))
        return [DeadLetter(key, rule, _loads(blob), created, dead_at, status, reason, answer)
                for key, rule, blob, created, dead_at, status, reason, answer in rows]

    def not_dead(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` that name no dead letter, in the given order."""
        found: set[str] = set()
        for start in range(0, len(keys), 500):  # SQLite caps the parameters per statement
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(key for (key,) in self._read(
                f"SELECT key FROM dead WHERE key IN ({marks})", chunk))  # noqa: S608
        return [key for key in keys if key not in found]

    def retry_dead(self, keys: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or those with `keys`) back to the end of the queue."""
        chosen = [(k,) for k in keys] if keys is not None else None
        with self._transaction("retry dead letters") as conn:
            if chosen is None:
                chosen = conn.execute("SELECT key FROM dead ORDER BY dead_at, key").fetchall()
            moved = 0
            for (key,) in chosen:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO queue (key, rule, event, created) "
                    "SELECT key, rule, event, created FROM dead WHERE key = ?", (key,))
                moved += max(cur.rowcount, 0)
                conn.execute("DELETE FROM dead WHERE key = ?", (key,))
        if moved:
            self._notify()
        return moved

    def purge(self, *, dead: bool = False) -> int:
        """Delete every queued event (or, with `dead`, every dead letter); return how many."""
        statement = "DELETE FROM dead" if dead else "DELETE FROM queue"
        with self._transaction(statement.lower()) as conn:
            count = max(conn.execute(statement).rowcount, 0)
        self.refresh_metrics(force=True)
        return count

    def get_meta(self, name: str) -> int:
        """A small integer of state kept in the outbox (0 when unset)."""
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def set_meta(self, name: str, value: int) -> None:
        """Save a small integer of state."""
        with self._transaction("meta") as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                         (name, value))

    def close(self) -> None:
        """Close the database (a checkpoint of the WAL happens on the last close)."""
        with self._lock:
            self._conn.close()
            self._holder.close()
