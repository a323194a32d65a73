"""What the stages hand each other: a source's batch in, friction events out, the outbox's
answer. Sources, the pipeline, the outbox and the forwarder all speak these types, so none
of them needs another stage's module to understand what it was given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_FAILURES = 20  # failure samples kept per `detect` call (and per merged Stats)


class Friction(NamedTuple):
    """One detection: its dedup key, the rule, the JSON body to POST to `/events`, the
    audit ID of the request it came from and the way its entity was found (label, owner,
    namespace or name; both for the log, neither stored nor sent)."""

    key: str
    rule: str
    event: dict[str, Any]
    audit_id: str = ""
    entity_by: str = ""


@dataclass
class Stats:
    """What one call of `Detector.detect` saw, for the metrics and the replay summary.

    `fixups` counts repairs made so that an event could still be delivered (a friction
    event whose time came from `stageTimestamp`, or was left to the backend). `failures`
    samples events whose evaluation raised: (auditID cleaned and cut, or '';
    "ExceptionType: message" cleaned and cut), at most `MAX_FAILURES`.
    """

    events: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    matched: Counter[tuple[str, str]] = field(default_factory=Counter)
    fixups: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    # how the entity of each event that yielded friction events was found, by method
    entities: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Stats) -> None:
        """Add another Stats' counts to this one (failure samples stay bounded)."""
        self.events += other.events
        self.invalid.update(other.invalid)
        self.skipped.update(other.skipped)
        self.matched.update(other.matched)
        self.fixups.update(other.fixups)
        self.entities.update(other.entities)
        room = MAX_FAILURES - len(self.failures)
        if room > 0:
            self.failures.extend(other.failures[:room])


@dataclass
class Evaluation:
    """What evaluating one batch of items found."""

    frictions: list[Friction]
    stats: Stats
    # (index into the items, reason) of every item that was not an audit event
    bad: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoint:
    """Where the tail of one followed file stands (see docs/internals.md)."""

    source: str
    path: str
    dev: int
    ino: int
    offset: int
    fingerprint: str
    # When the outbox last saved it (Unix time; None until saved): for a file that was
    # empty then, what was rotated afterwards holds its lines (sources/tailfiles.py).
    updated: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StoreResult:
    """What one `store` call did."""

    stored: int
    duplicates: int
    stored_keys: frozenset[str] = frozenset()  # the keys queued by this call
    expired: int = 0  # set aside as dead letters: older than the backend's retention


class OutboxError(Exception):
    """The transaction failed; nothing of it was stored."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class OutboxFull(OutboxError):
    """Storing would take the queue over its bound; nothing was stored."""
