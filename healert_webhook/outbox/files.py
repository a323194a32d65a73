"""The outbox's files as files: who holds them, whether they are sound, moving them aside.

The database sits beside its lock files. Every process that opens the outbox holds a
shared lock on `<db>.lock` for as long as it has it open; `outbox purge --corrupt`
needs it exclusively, so it never moves the file away from under a process that writes
to it. The one process that delivers holds `<db>.forward.lock` exclusively.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import IO

from healert_webhook.records import OutboxError


def lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


def wal_path(path: Path) -> Path:
    """The database's write-ahead log, where commits live until a checkpoint."""
    return Path(f"{path}-wal")


def forward_lock_path(path: Path) -> Path:
    """The file whose exclusive lock the one process delivering from the outbox holds."""
    return Path(f"{path}.forward.lock")


def hold(path: Path) -> IO[bytes]:
    """A shared lock on the outbox for as long as this process has it open.

    Any number of processes may share it (the agent, `replay --forward`, `outbox`
    commands); `purge --corrupt` needs it exclusively, so it cannot move the file away
    from under a process that is writing to it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(lock_path(path), "ab")  # noqa: SIM115 - held until close()
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
    except OSError as exc:
        raise OutboxError(f"cannot lock the outbox {path}: {exc.strerror or exc}",
                          "io") from exc
    return handle


def exclusive(path: Path) -> IO[bytes] | None:
    """The outbox's lock held exclusively, or None while any process has the outbox open."""
    handle = open(lock_path(path), "ab")  # noqa: SIM115 - the caller closes it
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def quick_check(path: Path) -> str:
    """SQLite's quick_check of the file, read-only: "ok", or what is wrong with it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        row = conn.execute("PRAGMA quick_check").fetchone()
        return str(row[0]) if row else "no answer"
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def move_aside(path: Path) -> list[Path]:
    """Rename a (corrupt) outbox and its WAL files to `<name>.corrupt-<time>`; return them."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            target = Path(f"{path}.corrupt-{stamp}{suffix}")
            source.rename(target)
            moved.append(target)
    return moved
