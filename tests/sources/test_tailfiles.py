"""File identity, rotated generations and where a checkpoint resumes (sources/tailfiles.py)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from healert_webhook.records import Checkpoint
from healert_webhook.sources import tailfiles
from healert_webhook.sources.tailfiles import Fingerprint, fingerprint, locate

from support import auditlog

SEED = 11


def lines_of(start: int, count: int) -> list[bytes]:
    """Lines `start`..`start+count` of the seeded audit log writer."""
    return [auditlog.make_line(SEED, i) for i in range(start, start + count)]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    (tmp_path / "audit").mkdir()
    return tmp_path / "audit" / "audit.log"


def test_fingerprint_of_short_file_still_matches_after_it_grows() -> None:
    short = fingerprint(b'{"a":1}\n')
    assert short.length == 8
    grown = b'{"a":1}\n' + b"x" * 10_000
    assert short.matches(grown[:4096])
    assert not short.matches(b'{"b":1}\n' + b"x" * 10)
    assert Fingerprint.decode(short.encode()) == short
    assert Fingerprint.decode("garbage") is None
    assert fingerprint(grown).length == tailfiles.FINGERPRINT_BYTES


def test_locate_same_inode_other_content_starts_new_file_at_zero(log_path: Path) -> None:
    # A real inode cannot be reused on demand, so the checkpoint is made to carry the
    # current file's dev/ino with the fingerprint of different (older) content.
    log_path.write_bytes(b"".join(lines_of(0, 20)))
    st = os.stat(log_path)
    old = fingerprint(b"".join(lines_of(100, 20)))
    cp = Checkpoint("tail:x", str(log_path), st.st_dev, st.st_ino, 5000, old.encode())
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.reason) == (log_path, 0, "fingerprint_mismatch")
    same = fingerprint(log_path.read_bytes()[:4096])
    cp = Checkpoint("tail:x", str(log_path), st.st_dev, st.st_ino, 1234, same.encode())
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.reason) == (log_path, 1234, "checkpoint")
    cp = Checkpoint("tail:x", str(log_path), st.st_dev, st.st_ino, 10**9, same.encode())
    assert locate(cp, log_path).reason == "truncated"


def test_locate_finds_rotated_and_gzipped_generations(log_path: Path) -> None:
    first = b"".join(lines_of(0, 30))
    second = b"".join(lines_of(30, 30))
    log_path.write_bytes(first)
    st1 = os.stat(log_path)
    rotated1 = log_path.with_name("audit-2026-11-26T10-00-00.000.log")
    os.rename(log_path, rotated1)
    log_path.write_bytes(second)
    st2 = os.stat(log_path)
    rotated2 = log_path.with_name("audit-2026-11-26T10-00-05.000.log")
    os.rename(log_path, rotated2)
    with gzip.open(f"{rotated2}.gz", "wb") as gz:
        gz.write(second)
    rotated2.unlink()
    log_path.write_bytes(b"".join(lines_of(60, 5)))

    cp = Checkpoint("tail:x", str(log_path), st1.st_dev, st1.st_ino, 700,
                    fingerprint(first).encode())
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.compressed) == (rotated1, 700, False)
    assert where.stamp == "2026-11-26T10-00-00.000"

    cp = Checkpoint("tail:x", str(log_path), st2.st_dev, st2.st_ino, 900,
                    fingerprint(second).encode())
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.compressed) == (Path(f"{rotated2}.gz"), 900, True)

    # The checkpointed generation was deleted: go on with the next newer one, from 0.
    cp = Checkpoint("tail:x", str(log_path.with_name("audit-2026-11-26T09-00-00.000.log")),
                    1, 2, 100, fingerprint(b"gone").encode())
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.reason) == (rotated1, 0, "lost")


def test_an_empty_file_checkpointed_then_gzipped_resumes_in_its_generation(
        log_path: Path) -> None:
    # A tailer's first open of an empty file saved (offset 0, no first bytes) at 12:00;
    # the file then got lines and was rotated with compression. Its .gz has no first bytes
    # to be known by, but it is the first generation rotated after the save; an older one
    # (rotated before the file the checkpoint names was opened) is never read again.
    older = log_path.with_name("audit-2026-11-26T11-59-59.999.log.gz")
    with gzip.open(older, "wb") as gz:
        gz.write(b"".join(lines_of(0, 5)))
    ours = log_path.with_name("audit-2026-11-26T12-00-00.001.log.gz")
    with gzip.open(ours, "wb") as gz:
        gz.write(b"".join(lines_of(5, 5)))
    log_path.write_bytes(b"".join(lines_of(10, 5)))
    saved = 1795694400.0  # 2026-11-26T12:00:00Z
    cp = Checkpoint("tail:x", str(log_path), 1, 2, 0, fingerprint(b"").encode(), saved)
    where = locate(cp, log_path)
    assert (where.path, where.offset, where.compressed, where.reason) == (
        ours, 0, True, "rotated_since")
    # Without the time of the save nothing tells the generations apart: the followed
    # file, as before, and the loss is logged.
    unsaved = Checkpoint("tail:x", str(log_path), 1, 2, 0, fingerprint(b"").encode())
    where = locate(unsaved, log_path)
    assert (where.path, where.reason) == (log_path, "lost")
