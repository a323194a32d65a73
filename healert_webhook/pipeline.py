"""The one detection pipeline every source feeds: detect, count, hand to the outbox.

Sources (webhook, tail, replay) parse their input and call `Pipeline.detect`; what it
returns goes to the outbox. The active Detector is swapped in one assignment on reload,
so a batch is always evaluated by one complete rule set, never half of one.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from healert_webhook import metrics
from healert_webhook.config import Settings
from healert_webhook.detect import Detector, Friction, Stats
from healert_webhook.rules import RulesError, RuleSet, load_rules, resolve_rules_path

log = logging.getLogger(__name__)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is parsed and evaluated.

    Parsing 400 events creates tens of thousands of dicts and lists, which triggers many
    generation-0 collections and promotes the whole tree to older generations, only for
    it to be freed by reference counting a moment later (parsed JSON holds no cycles).
    Callers drop the parsed batch before leaving the block, so the collector's counters
    fall back and no collection runs over it. Re-enables only what it disabled.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def record(stats: Stats, source: str) -> None:
    """Add one batch's counts to the Prometheus metrics (once per batch, not per event)."""
    metrics.AUDIT_EVENTS.labels(source).inc(stats.events)
    for reason, count in stats.invalid.items():
        metrics.INVALID_EVENTS.labels(source, reason).inc(count)
    for reason, count in stats.skipped.items():
        metrics.SKIPPED_EVENTS.labels(source, reason).inc(count)
    for (rule, severity), count in stats.matched.items():
        metrics.FRICTION_EVENTS.labels(rule, severity).inc(count)


def make_detector(ruleset: RuleSet, settings: Settings) -> Detector:
    """A Detector for `ruleset` with the settings' entity and own namespaces."""
    return Detector(ruleset, entity_namespace=settings.entity_namespace,
                    own_namespace=settings.k8s_namespace)


class Pipeline:
    """Holds the active rules; sources call `detect` for every parsed batch or chunk."""

    def __init__(self, settings: Settings, detector: Detector) -> None:
        self.settings = settings
        self.detector = detector
        metrics.RULES_LOADED.set(len(detector.rules))

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        """Load the configured rules (raises RulesError) and build the pipeline."""
        ruleset = load_rules(resolve_rules_path(settings.rules_path))
        return cls(settings, make_detector(ruleset, settings))

    def detect(self, events: Iterable[Any], source: str) -> tuple[list[Friction], Stats]:
        """Run the active rules over parsed events and record the counts."""
        stats = Stats()
        found = self.detector.detect(events, stats)
        record(stats, source)
        return found, stats

    def reload(self) -> bool:
        """Reload the rules file; keep the old rules if the new file is invalid."""
        path = resolve_rules_path(self.settings.rules_path)
        try:
            ruleset = load_rules(path)
        except RulesError as exc:
            metrics.RULES_RELOADS.labels("failure").inc()
            for problem in exc.problems:
                log.error("rules reload failed, keeping the previous rules: %s", problem)
            return False
        self.detector = make_detector(ruleset, self.settings)
        metrics.RULES_RELOADS.labels("success").inc()
        metrics.RULES_LOADED.set(len(self.detector.rules))
        log.info("rules reloaded from %s: %d enabled", ruleset.source, len(self.detector.rules))
        return True
