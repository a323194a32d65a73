"""The outbox's memory of the keys it committed lately (outbox/recent.py), and the
resends it answers from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_outbox import counts, friction, sample

from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox, move_aside
from healert_webhook.outbox.recent import RecentKeys
from healert_webhook.pipeline import Pipeline, make_detector
from healert_webhook.records import Checkpoint, OutboxError, OutboxFull, StoreResult
from healert_webhook.rules import load_rules

from support.paths import ROOT


class Clock:
    """A clock the test moves (the window is minutes long)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_held_for_the_window_from_their_commit_and_bounded() -> None:
    clock = Clock()
    recent = RecentKeys(60.0, most=3, clock=clock)
    assert not recent.hold_all([])  # nothing to answer for
    recent.add(["a", "b"])
    assert recent.hold_all(["a", "b"]) and not recent.hold_all(["a", "c"])
    clock.now += 30
    recent.add(["c"])
    clock.now += 30  # a and b: exactly the window ago
    assert not recent.hold_all(["a"]) and recent.hold_all(["c"])
    recent.add(["a", "d"])  # "a" again moves to the young end; "b" is evicted, then "c"
    assert len(recent) == 3
    assert recent.hold_all(["a", "d"]) and not recent.hold_all(["b"])


def test_a_batch_committed_before_is_answered_from_memory(outbox: Outbox) -> None:
    batch = [friction(1), friction(2), friction(1)]
    assert outbox.resent(batch) is None  # nothing committed yet
    assert counts(outbox.store(batch)) == (2, 1)
    assert outbox.resent(batch) == StoreResult(0, 3)
    assert outbox.resent([friction(2), friction(3)]) is None  # one new: store it
    assert counts(outbox.store([friction(2), friction(3)])) == (1, 1)
    # a checkpoint is always written, whatever memory says
    cp = Checkpoint("tail:/x", "/x", 1, 2, 10, "0:00")
    assert counts(outbox.store([friction(3)], cp)) == (0, 1)
    assert outbox.load_checkpoint("tail:/x") == cp
    assert [row.key for row in outbox.head(10)] == [friction(n).key for n in (1, 2, 3)]


def test_a_refused_store_is_not_remembered(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", Settings(outbox_max_events=2))
    box.store([friction(1), friction(2)])
    with pytest.raises(OutboxFull):
        box.store([friction(3)])
    assert box.resent([friction(3)]) is None
    assert box.resent([friction(1), friction(2)]) == StoreResult(0, 2)
    box.close()


def test_a_moved_file_is_not_answered_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path)
    box.store([friction(1)])
    assert box.resent([friction(1)]) is not None
    move_aside(path)
    # the events are in the moved file only: a resend must be refused (503), not lost
    assert box.resent([friction(1)]) is None
    with pytest.raises(OutboxError, match="moved, deleted or replaced"):
        box.store([friction(1)])
    box.close()


def test_the_pipeline_counts_a_resend_as_duplicates(outbox: Outbox) -> None:
    pipeline = Pipeline(Settings(), make_detector(load_rules(ROOT / "rules.yaml"), Settings()),
                        outbox)
    batch = [friction(7), friction(8)]
    assert pipeline.resent(batch, "webhook") is None
    pipeline.store(batch, "webhook")
    before = sample("healert_duplicates_suppressed_total", {"source": "webhook"})
    assert pipeline.resent(batch, "webhook") == StoreResult(0, 2)
    assert sample("healert_duplicates_suppressed_total", {"source": "webhook"}) == before + 2
    assert Pipeline(Settings(), pipeline.detector).resent(batch, "webhook") is None
