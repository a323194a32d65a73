"""The outbox's database: its tables, how a file is opened, checked and migrated.

Durability: `synchronous=FULL` makes every commit fsync the WAL, so a webhook batch answered
2xx (after `store` returned) survives a power loss, not only a process crash (NORMAL would
survive `kill -9` but could lose the last commits on power loss, and an answered batch is
promised to be durably stored). Migrations only go forward: a file of a newer schema than
this code knows is refused with the way back, never written.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from healert_webhook.records import OutboxError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000
RECOVERY_HINT = (
    "stop the agent, then run `healert-webhook outbox purge --corrupt` (moves {path} aside "
    "to {path}.corrupt-<time>; events still in it can be salvaged with "
    "`sqlite3 {path}.corrupt-<time> .recover`) and start again with an empty outbox")


class OutboxCorrupt(OutboxError):
    """The database file is not a usable SQLite outbox; the message says how to recover."""


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1
    (
        """CREATE TABLE queue (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             key TEXT NOT NULL UNIQUE,
             rule TEXT NOT NULL,
             event BLOB NOT NULL,
             created REAL NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             last_error TEXT,
             in_flight REAL)""",
        """CREATE TABLE delivered (key TEXT PRIMARY KEY, delivered REAL NOT NULL)
             WITHOUT ROWID""",
        "CREATE INDEX delivered_time ON delivered (delivered)",
        """CREATE TABLE dead (
             key TEXT PRIMARY KEY, rule TEXT NOT NULL, event BLOB NOT NULL,
             created REAL NOT NULL, dead_at REAL NOT NULL, status INTEGER,
             reason TEXT NOT NULL, answer TEXT)""",
        """CREATE TABLE checkpoints (
             source TEXT PRIMARY KEY, path TEXT NOT NULL, dev INTEGER NOT NULL,
             ino INTEGER NOT NULL, "offset" INTEGER NOT NULL, fingerprint TEXT NOT NULL,
             updated REAL NOT NULL)""",
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta VALUES ('depth', 0), ('logged_seq', 0)",
        # an exact queue depth without count(*) over 100k rows, correct across processes
        """CREATE TRIGGER queue_in AFTER INSERT ON queue BEGIN
             UPDATE meta SET value = value + 1 WHERE name = 'depth'; END""",
        """CREATE TRIGGER queue_out AFTER DELETE ON queue BEGIN
             UPDATE meta SET value = value - 1 WHERE name = 'depth'; END""",
    ),
    # 1 -> 2: the oldest dead letters are found without reading them all (prune_dead). An
    # agent of schema 1 refuses this file; the way back is `DROP INDEX dead_time;
    # PRAGMA user_version = 1` (nothing else changed).
    (
        "CREATE INDEX dead_time ON dead (dead_at, key)",
    ),
)


ERROR_REASONS = ("disk_full", "read_only", "corrupt", "busy", "io", "other")


def error_reason(exc: BaseException) -> str:
    """A short, bounded label for a SQLite failure (one of ERROR_REASONS; a metric label
    and /readyz text)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "disk_full"
    if name.startswith("SQLITE_READONLY"):
        return "read_only"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "corrupt"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "busy"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return "io"
    return "other"


def open_database(path: Path) -> sqlite3.Connection:
    """The outbox database at `path`, configured, checked and migrated to SCHEMA_VERSION.

    Raises OutboxCorrupt for a file that is no usable database, OutboxError otherwise.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutboxError(f"outbox directory {path.parent}: {exc.strerror}",
                          "io") from exc
    try:
        conn = sqlite3.connect(str(path), isolation_level=None,
                               check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open outbox {path}: {exc}", error_reason(exc)) from exc
    try:
        _configure(conn)
        _check_integrity(path, conn)
        _migrate(path, conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        reason = error_reason(exc)
        if reason == "corrupt" or "not a database" in str(exc):
            raise OutboxCorrupt(
                f"outbox database {path} is corrupt ({exc}); "
                + RECOVERY_HINT.format(path=path), "corrupt") from exc
        raise OutboxError(f"cannot open outbox {path}: {exc}", reason) from exc
    except OutboxError:
        conn.close()
        raise
    return conn

def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"outbox could not switch to WAL mode (got {mode})", "io")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")

def _check_integrity(path: Path, conn: sqlite3.Connection) -> None:
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        raise OutboxCorrupt(
            f"outbox database {path} is corrupt (quick_check: {row and row[0]}); "
            + RECOVERY_HINT.format(path=path), "corrupt")

def _migrate(path: Path, conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"outbox {path} has schema version {version}, newer than this agent's "
            f"{SCHEMA_VERSION}: run the newer agent again, or take the file back to schema "
            f"{SCHEMA_VERSION} first (docs/operations.md, \"Upgrades and rollbacks\"); do not "
            "move it aside: it holds events not delivered yet", "version")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("outbox %s migrated to schema version %d", path, target)
