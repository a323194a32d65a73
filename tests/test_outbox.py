"""The SQLite outbox on real files: dedup, bounds, atomic checkpoints, failures, migration."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from healert_webhook.config import Settings
from healert_webhook.outbox import (
    SCHEMA_VERSION,
    UNDECODABLE,
    Outbox,
    OutboxCorrupt,
    move_aside,
)
from healert_webhook.records import Checkpoint, Friction, OutboxError, OutboxFull, StoreResult

REPO = Path(__file__).resolve().parent.parent


def friction(n: int, rule: str = "exec-into-pod") -> Friction:
    return Friction(f"{n:032x}", rule, {
        "entity_ref": f"component:default/svc-{n}", "type": rule, "severity": "high",
        "description": f"event {n}"})



def counts(result: StoreResult) -> tuple[int, int]:
    """(stored, duplicates) of one store call."""
    return result.stored, result.duplicates


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def cp(offset: int) -> Checkpoint:
    return Checkpoint("tail:/var/log/audit.log", "/var/log/audit.log", 1, 2, offset, "ab" * 8)


def test_store_queues_in_order_and_dedups(outbox: Outbox) -> None:
    batch = [friction(1), friction(2), friction(1), friction(3)]
    assert counts(outbox.store(batch)) == (3, 1)
    assert counts(outbox.store(batch[:2])) == (0, 2)  # the apiserver resent the batch
    rows = outbox.head(10)
    assert [r.key for r in rows] == [friction(n).key for n in (1, 2, 3)]
    assert rows[0].event == friction(1).event
    assert outbox.stats().depth == 3


def test_wal_full_sync_and_schema_version(outbox: Outbox) -> None:
    conn = sqlite3.connect(outbox.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_checkpoint_is_stored_with_the_rows(outbox: Outbox) -> None:
    assert outbox.load_checkpoint("tail:/var/log/audit.log") is None
    outbox.store([friction(1)], cp(100))
    outbox.store([], cp(250))
    assert outbox.load_checkpoint("tail:/var/log/audit.log") == cp(250)


def test_a_failed_transaction_leaves_nothing(outbox: Outbox) -> None:
    outbox.store([friction(1)], cp(10))
    before = sample("healert_outbox_write_errors_total", {"reason": "other"})
    with pytest.raises(OutboxError):
        # the rows are inserted first, then the checkpoint's offset cannot be stored
        outbox.store([friction(2), friction(3)], cp(2**70))
    assert [r.key for r in outbox.head(10)] == [friction(1).key]
    assert outbox.load_checkpoint("tail:/var/log/audit.log") == cp(10)
    assert outbox.stats().depth == 1
    assert sample("healert_outbox_write_errors_total", {"reason": "other"}) == before + 1
    assert outbox.store([friction(2)]).stored == 1  # and the outbox still works


def test_disk_full_is_an_outbox_error_and_readiness_says_so(outbox: Outbox) -> None:
    # A real SQLITE_FULL without filling the test machine's disk: cap the database size.
    # (Poking the private connection is the only way to set this pragma on it.)
    pages = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
    outbox._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    big = [Friction(f"{n:032x}", "r", {"description": "x" * 4000}) for n in range(50)]
    with pytest.raises(OutboxError) as err:
        outbox.store(big, cp(5))
    assert err.value.reason == "disk_full"
    assert outbox.writable() == "outbox writes failing: disk_full"
    assert outbox.stats().depth == 0
    assert outbox.load_checkpoint("tail:/var/log/audit.log") is None
    outbox._conn.execute("PRAGMA max_page_count = 1073741823")
    outbox.store([friction(1)])
    assert outbox.writable() is None


def test_delivered_keys_are_remembered_for_the_window(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", Settings(dedup_window=0.3))
    box.store([friction(1)])
    row = box.head()[0]
    box.mark_delivered(row.seq, row.key)
    assert box.stats().depth == 0
    assert counts(box.store([friction(1)])) == (0, 1)  # a late duplicate is not sent again
    time.sleep(0.4)
    assert box.store([friction(1)]).stored == 1  # past the window it is new again
    box.close()


def test_dead_letters_count_as_seen_and_can_be_retried(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2), friction(3)])
    first = outbox.head()[0]
    assert outbox.dead_letter(first.seq, status=422, reason="type refused", answer="x" * 5000)
    assert outbox.store([friction(1)]).duplicates == 1
    dead = outbox.dead_letters()
    assert [(d.key, d.status, d.reason) for d in dead] == [(first.key, 422, "type refused")]
    assert dead[0].answer is not None and len(dead[0].answer) == 1000
    assert outbox.retry_dead() == 1
    assert outbox.dead_letters() == []
    # requeued at the end, after the events that were behind it
    assert [r.key for r in outbox.head(10)] == [friction(n).key for n in (2, 3, 1)]
    assert outbox.dead_letter(12345, status=None, reason="gone") is False


def test_retry_dead_by_key(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2)])
    for row in outbox.head(2):
        outbox.dead_letter(row.seq, status=None, reason="contract")
    assert outbox.retry_dead([friction(2).key]) == 1
    assert [d.key for d in outbox.dead_letters()] == [friction(1).key]
    assert outbox.retry_dead([]) == 0


def test_a_full_queue_refuses_the_whole_store_and_evicts_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", Settings(outbox_max_events=5))
    cp = Checkpoint("tail:/x", "/x", 1, 2, 100, "0:00")
    box.store([friction(n) for n in range(4)])
    assert box.writable() is None
    with pytest.raises(OutboxFull, match="HEALERT_OUTBOX_MAX_EVENTS=5"):
        box.store([friction(n) for n in range(4, 8)], cp)
    # nothing of the refused store is there, its checkpoint neither; nothing was evicted
    assert [r.key for r in box.head(10)] == [friction(n).key for n in range(4)]
    assert box.load_checkpoint("tail:/x") is None
    assert "outbox full" in (box.writable() or "")
    assert sample("healert_outbox_full") == 1
    # duplicates take no room: the same events again are still taken
    assert counts(box.store([friction(n) for n in range(4)])) == (0, 4)
    assert counts(box.store([friction(4)], cp)) == (1, 0)  # exactly up to the bound
    assert box.load_checkpoint("tail:/x") == cp
    assert sample("healert_outbox_full") == 0
    assert "outbox full" in (box.writable() or "")  # at the bound: not ready
    row = box.head(1)[0]
    box.mark_delivered(row.seq, row.key)
    assert box.writable() is None
    box.close()


def test_a_moved_or_deleted_file_is_never_written_again(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path)
    box.store([friction(1)])
    moved = move_aside(path)
    assert moved
    with pytest.raises(OutboxError, match="moved, deleted or replaced"):
        box.store([friction(2)])
    assert "moved, deleted or replaced" in (box.writable() or "")
    Outbox(path).close()  # a new, empty file at the path is still not ours
    with pytest.raises(OutboxError, match="moved, deleted or replaced"):
        box.store([friction(3)])
    box.close()
    # what was acknowledged before the move is in the moved file, and only there
    kept = Outbox(moved[0])
    assert [r.key for r in kept.head(10)] == [friction(1).key]
    kept.close()


def test_in_flight_marks_survive_and_clear(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2)])
    row = outbox.head()[0]
    outbox.mark_in_flight(row.seq)
    assert [r.key for r in outbox.in_flight()] == [row.key]
    outbox.mark_failed(row.seq, "timed out", not_taken=False)
    assert outbox.head()[0].in_flight is not None  # no answer: still uncertain
    outbox.mark_failed(row.seq, "HTTP 503", not_taken=True)
    head = outbox.head()[0]
    assert head.in_flight is None and head.last_error == "HTTP 503" and head.attempts == 1


def test_concurrent_stores_from_threads(outbox: Outbox) -> None:
    errors: list[BaseException] = []

    def worker(base: int) -> None:
        try:
            for i in range(20):
                # overlapping keys between threads: each must be stored once
                outbox.store([friction(base + i), friction(i)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(1000 * (t + 1),)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = [r.key for r in outbox.head(1000)]
    assert len(keys) == len(set(keys)) == 6 * 20 + 20
    assert outbox.stats().depth == 140


def test_reopen_keeps_everything_and_migration_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.store([friction(1)], cp(7))
    box.close()
    box = Outbox(path)
    assert [r.key for r in box.head()] == [friction(1).key]
    assert box.load_checkpoint(cp(7).source) == cp(7)
    box.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer than this agent") as refused:
        Outbox(path)
    # the way back is named, and moving the file aside (losing its events) is not it
    assert "Upgrades and rollbacks" in str(refused.value)
    assert "do not move it aside" in str(refused.value)


def test_a_corrupt_file_names_itself_and_the_recovery(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, it is garbage " * 200)
    with pytest.raises(OutboxCorrupt) as err:
        Outbox(path)
    message = str(err.value)
    assert str(path) in message and "outbox purge --corrupt" in message
    moved = move_aside(path)
    assert not path.exists() and moved and moved[0].name.startswith("outbox.db.corrupt-")
    Outbox(path).close()  # a fresh outbox opens


def test_a_stored_batch_survives_kill_9(tmp_path: Path) -> None:
    """The process is SIGKILLed right after store returns: the rows are on disk."""
    path = tmp_path / "o.db"
    script = (
        "import os, signal, sys\n"
        "from healert_webhook.outbox import Outbox\n"
        "from healert_webhook.records import Friction\n"
        "box = Outbox(sys.argv[1])\n"
        "box.store([Friction(f'{n:032x}', 'r', {'n': n}) for n in range(50)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, check=False)
    assert proc.returncode == -9
    box = Outbox(path)
    assert [r.event["n"] for r in box.head(100)] == list(range(50))
    box.close()


def test_metrics_follow_the_queue(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2)])
    stats = outbox.refresh_metrics(force=True)
    assert stats is not None and stats.depth == 2
    assert sample("healert_outbox_depth") == 2
    row = outbox.head()[0]
    outbox.dead_letter(row.seq, status=422, reason="x")
    outbox.refresh_metrics(force=True)
    assert sample("healert_outbox_depth") == 1
    assert sample("healert_dead_letters") == 1
    assert sample("healert_outbox_oldest_age_seconds") >= 0


def test_purge(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2)])
    outbox.dead_letter(outbox.head()[0].seq, status=None, reason="x")
    assert outbox.purge(dead=True) == 1
    assert outbox.purge() == 1
    assert outbox.stats().depth == 0


def test_dead_letters_are_pruned_by_age_then_count_and_their_keys_remembered(
        outbox: Outbox) -> None:
    outbox.store([friction(n) for n in range(10)])
    for row in outbox.head(10):
        outbox.dead_letter(row.seq, status=422, reason="refused")
    now = time.time()
    with outbox._lock:  # refused 40 days (1, 2) and about 2 days (0, 3..9) ago
        outbox._conn.executemany("UPDATE dead SET dead_at = ? WHERE key = ?", [
            (now - (40 if n in (1, 2) else 2 - n / 100) * 86_400, friction(n).key)
            for n in range(10)])
    assert outbox.prune_dead(30.0, 5) == {"age": 2, "count": 3}
    # the oldest go first: 0, 3, 4 (2.00, 1.97, 1.96 days) are over the count of 5
    assert sorted(d.key for d in outbox.dead_letters()) == \
        [friction(n).key for n in range(5, 10)]
    assert outbox.prune_dead(30.0, 5) == {"age": 0, "count": 0}
    # a late duplicate of any pruned one is still not queued: its key is remembered
    assert counts(outbox.store([friction(n) for n in (0, 1, 2, 3, 4)])) == (0, 5)
    assert outbox.stats().delivered_remembered == 5


def test_a_stored_event_that_is_not_json_is_read_as_undecodable(outbox: Outbox) -> None:
    outbox.store([friction(1), friction(2)])
    with outbox._lock:  # what another program could leave in the file
        outbox._conn.execute("UPDATE queue SET event = ? WHERE key = ?",
                             (b"\xff{", friction(1).key))
    first, second = outbox.head(2)
    assert UNDECODABLE in first.event and second.event == friction(2).event
    assert outbox.get(first.seq) == first and outbox.get(12345) is None
    assert [r.key for r in outbox.head(2, skip=[first.seq])] == [friction(2).key]


def test_a_schema_1_outbox_gains_the_dead_letter_index(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:  # as an agent of schema 1 left it
        conn.execute("DROP INDEX dead_time")
        conn.execute("PRAGMA user_version = 1")
    box = Outbox(path)
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'index'")]
    assert "dead_time" in names
