"""The one detection pipeline every source feeds: detect, store, count.

Sources hand over what they read as a `Read` of the active rule set: the candidate
events, parsed one at a time as detection asks for them, and the counts of what was
settled without a parse. The tail and replay read raw log lines or parsed documents
through `read` (reading.py); the webhook reads its bodies with the field pass or simdjson
(sources/body.py). The pipeline does the rest the same way for all three: run the rules,
record the counts, store the friction events in the outbox (with a tail checkpoint in
the same transaction), count the duplicates the outbox suppressed, and log one line per
friction event stored.

`evaluate` and `store` are the two halves; `process` does both. The tail evaluates chunks
as it reads them and stores at checkpoints; replay stores only with `--forward`.
Everything here is blocking (the outbox fsyncs): the webhook calls it from a worker thread.
The active `Rules` are swapped in one assignment on reload, and a `Read` keeps the set it
was read with, so a batch is always evaluated by one complete rule set, never half of one.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from healert_webhook import metrics
from healert_webhook.cluster.view import View
from healert_webhook.config import Settings
from healert_webhook.detect import Detector
from healert_webhook.logs import Limiter
from healert_webhook.outbox import Outbox
from healert_webhook.prefilter import Prefilter
from healert_webhook.reading import parse_each, parse_open
from healert_webhook.records import Checkpoint, Evaluation, Friction, Stats, StoreResult
from healert_webhook.rules import (
    RulesError,
    RuleSet,
    Superseded,
    load_rules,
)

log = logging.getLogger(__name__)
# One INFO line per friction event stored; a flood (a replayed month) is summarised.
_stored_lines = Limiter(log, per_interval=50, interval=10.0, what="friction events stored")
_failure_lines = Limiter(log, per_interval=5, interval=60.0,
                         what="audit events that could not be evaluated")



class _GcPause:
    """The collector's pause, shared by every thread that evaluates a batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


_pause = _GcPause()


def gc_paused() -> AbstractContextManager[None]:
    """Pause the cyclic garbage collector while a batch is parsed and evaluated.

    Parsing 400 events creates tens of thousands of dicts and lists, which triggers many
    generation-0 collections and promotes the whole tree to older generations, only for
    it to be freed by reference counting a moment later (parsed JSON holds no cycles).
    Callers drop the parsed batch before leaving the block. Several threads may hold the
    pause at once: the collector comes back when the last one leaves, and only if it was
    on when the first one came.
    """
    return _pause()


def _evaluation(frictions: list[Friction], stats: Stats, ruled_out: Counter[str],
                bad: list[tuple[int, str]], source: str) -> Evaluation:
    """One batch's result, its counts recorded: the events the pre-filter ruled out
    counted as detection would have counted them."""
    total = sum(ruled_out.values())
    stats.events += total
    stats.skipped.update(ruled_out)
    if total:
        metrics.RULED_OUT_EVENTS.labels(source).inc(total)
    record(stats, bad, source)
    return Evaluation(frictions, stats, bad)


def record(stats: Stats, bad: Sequence[tuple[int, str]], source: str) -> None:
    """Add one batch's counts to the Prometheus metrics (once per batch, not per event)."""
    not_events = [reason for _index, reason in bad if reason != "blank"]
    metrics.AUDIT_EVENTS.labels(source).inc(stats.events + len(not_events))
    for reason, count in stats.invalid.items():
        metrics.INVALID_EVENTS.labels(source, reason).inc(count)
    for reason in not_events:
        metrics.INVALID_EVENTS.labels(source, reason).inc()
    for reason, count in stats.skipped.items():
        metrics.SKIPPED_EVENTS.labels(source, reason).inc(count)
    for (rule, severity), count in stats.matched.items():
        metrics.FRICTION_EVENTS.labels(rule, severity).inc(count)
    for fixup, count in stats.fixups.items():
        metrics.EVENT_FIXUPS.labels(source, fixup).inc(count)
    for method, count in stats.entities.items():
        metrics.ENTITY_RESOLUTIONS.labels(method).inc(count)
    for audit_id, error in stats.failures:
        _failure_lines.error("an audit event from %s could not be evaluated and was skipped "
                             "(counted as invalid, reason evaluation_error): auditID=%s: %s",
                             source, audit_id or "-", error)


def make_detector(ruleset: Any, settings: Settings, view: View | None = None) -> Detector:
    """A Detector for `ruleset` with the settings' entity and own namespaces, label keys,
    catalog namespace and access proxies, reading `view` (the view of the cluster)."""
    detector = Detector(ruleset, entity_namespace=settings.entity_namespace,
                        own_namespace=settings.k8s_namespace, view=view,
                        label_keys=settings.entity_label_keys,
                        catalog_namespace=settings.catalog_namespace,
                        proxies=settings.access_proxies)
    if view is not None and detector.gitops_view is None:
        log.warning("rules: config.gitops names labels or annotations the view of the "
                    "cluster was not started with: GitOps ownership is read from the "
                    "events only until the agent restarts")
    return detector


@dataclass(frozen=True)
class Rules:
    """One complete rule set: the detector and its pre-filter, swapped together."""

    detector: Detector
    prefilter: Prefilter


@dataclass
class Read:
    """What a source read, ready for detection by one rule set.

    `events` yields the candidate events, each parsed when detection asks for it; as it
    is consumed, `ruled_out` counts by skip reason the events settled without a parse,
    and `bad` lists (index, reason) of the items that are no audit event. Reading may
    raise from `events` (a body that is no batch, one too large): nothing is counted then.
    """

    rules: Rules
    events: Iterable[dict[str, Any]]
    ruled_out: Counter[str] = field(default_factory=Counter)
    bad: list[tuple[int, str]] = field(default_factory=list)


class Pipeline:
    """The active rules and the outbox; every source calls into it (see the docstring)."""

    def __init__(self, settings: Settings, detector: Detector,
                 outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.view: View | None = detector.view  # every rule set reads the same view
        # swapped in one assignment on reload: a batch sees one rule set, never half
        self._rules = Rules(detector, Prefilter(detector))
        self.outbox = outbox
        self._rules_problem: str | None = None
        self._loaded: bytes | None = None  # the rules file started with, still to keep
        _count_rules(detector)

    @classmethod
    def from_settings(cls, settings: Settings, outbox: Outbox | None = None) -> Pipeline:
        """Load the configured rules (raises RulesError) and build the pipeline."""
        with gc_paused():  # see Pipeline.reload
            detector = make_detector(load_rules(settings.rules_path), settings)
        return cls(settings, detector, outbox)

    @classmethod
    def for_agent(cls, settings: Settings) -> Pipeline:
        """The agent's pipeline, which always starts: on the configured rules, else (the
        file cannot be used) on the last rules that loaded, else on the packaged ones.

        A receiver that exits on a bad rules file crash-loops on every restart, rollout
        or reboot while the apiserver drops its batches; one that runs on the last good
        rules says so loudly instead (ERROR, /readyz, healert_rules_file_invalid) until
        the file is fixed, and the watcher applies the fixed file. The rules that loaded
        are kept by `keep_last_good`, once the start has gone far enough to write.
        """
        loaded: list[bytes] = []
        try:
            with gc_paused():
                ruleset = load_rules(settings.rules_path, keep=loaded.append)
        except RulesError as exc:
            ruleset, fallback = _fallback_rules(settings, exc)
            with gc_paused():
                pipeline = cls(settings, make_detector(ruleset, settings))
            pipeline._rules_problem = (f"rules file {exc.source} is invalid ({exc.total} "
                                       f"problem(s)): running on {fallback}")
            metrics.RULES_FILE_INVALID.set(1)
            return pipeline
        metrics.RULES_FILE_INVALID.set(0)
        with gc_paused():
            pipeline = cls(settings, make_detector(ruleset, settings))
        pipeline._loaded = loaded[0] if loaded else None
        return pipeline

    def keep_last_good(self) -> None:
        """Keep the rules file the agent started with, if it loaded (see `for_agent`)."""
        if self._loaded is not None:
            _LastGood(self.settings)(self._loaded)
            self._loaded = None

    def note(self) -> str | None:
        """Why the configured rules file is not the one in use, or None (for /readyz)."""
        return self._rules_problem

    @property
    def rules(self) -> Rules:
        """The active rule set (read it once per batch)."""
        return self._rules

    @property
    def detector(self) -> Detector:
        """The active rules' detector."""
        return self._rules.detector

    def use_view(self, view: View) -> None:
        """Read `view` (the view of the cluster) from now on: the active rules again,
        with it (a batch being evaluated keeps the rule set it started with)."""
        self.view = view
        ruleset = self._rules.detector.ruleset
        with gc_paused():
            detector = make_detector(ruleset, self.settings, view)
            self._rules = Rules(detector, Prefilter(detector))

    def read(self, items: Iterable[Any], prefilter: bool = True) -> Read:
        """Raw JSON items (log lines) or parsed events, for detection by the active rules.

        Without `prefilter` every event is parsed in full: for files another producer
        may have written (see prefilter.py).
        """
        rules = self._rules
        read = Read(rules, ())
        read.events = parse_each(items, read.bad, rules.prefilter if prefilter else None,
                                 read.ruled_out)
        return read

    def read_lines(self, block: bytes | memoryview, longest: int
                   ) -> tuple[int, Read, list[int]] | None:
        """`read` of the log lines in `block` (each ended by a newline) by the field
        pass's lines reader (native): their number, the read, and the lines longer than
        `longest`, which are not read (no event). None without that reader: split the
        block and `read` the lines."""
        rules = self._rules
        read = Read(rules, ())
        found = rules.prefilter.fields.sort_lines(block, longest, read.ruled_out)
        if found is None:
            return None
        count, open_lines = found
        too_long: list[int] = []
        read.events = parse_open(block, open_lines, read.bad, rules.prefilter,
                                 read.ruled_out, longest=longest, too_long=too_long)
        return count, read, too_long

    def evaluate(self, read: Read, source: str, received: float | None = None) -> Evaluation:
        """Detect over what a source read and record the counts; never raises on an
        event (reading itself may raise, see `Read`). `received` is the Unix time the
        source got the events (now when not given): event times far ahead are repaired.
        """
        when = time.time() if received is None else received
        stats = Stats()
        with gc_paused():
            frictions = read.rules.detector.detect(read.events, stats, when)
        return _evaluation(frictions, stats, read.ruled_out, read.bad, source)

    def evaluate_items(self, items: Iterable[Any], source: str, prefilter: bool = True,
                       received: float | None = None) -> Evaluation:
        """`evaluate` of `read(items, prefilter)`."""
        return self.evaluate(self.read(items, prefilter), source, received)

    def store(self, frictions: Sequence[Friction], source: str,
              checkpoint: Checkpoint | None = None) -> StoreResult:
        """Store `frictions` (and `checkpoint`) in one outbox transaction; count and log.

        Raises OutboxError when nothing could be stored. Blocking.
        """
        if not frictions and checkpoint is None:
            return StoreResult(0, 0)
        if self.outbox is None:
            raise RuntimeError("this pipeline has no outbox")
        result = self.outbox.store(frictions, checkpoint)
        if result.duplicates:
            metrics.DUPLICATES.labels(source).inc(result.duplicates)
        if result.stored:
            self._log_stored(frictions, result, source)
        return result

    def resent(self, frictions: Sequence[Friction], source: str) -> StoreResult | None:
        """`store`'s answer for a batch of friction events the outbox committed lately
        (a resend: all duplicates, counted), or None: `store` it. Never blocks."""
        if self.outbox is None:
            return None
        result = self.outbox.resent(frictions)
        if result is not None:
            metrics.DUPLICATES.labels(source).inc(result.duplicates)
        return result

    def process(self, items: Sequence[Any], source: str,
                checkpoint: Checkpoint | None = None) -> tuple[Evaluation, StoreResult]:
        """Evaluate the items and store what they yield, in one call."""
        found = self.evaluate_items(items, source)
        return found, self.store(found.frictions, source, checkpoint)

    @staticmethod
    def _log_stored(frictions: Sequence[Friction], result: StoreResult, source: str) -> None:
        fresh = set(result.stored_keys)
        for friction in frictions:
            if friction.key in fresh:  # once a key: a request seen at two stages is one row
                fresh.discard(friction.key)
                event = friction.event
                _stored_lines.info("friction stored", extra={
                    "rule": friction.rule, "actor": event.get("actor", "-"),
                    "entity": event.get("entity_ref"), "entity_by": friction.entity_by or "-",
                    "auditID": friction.audit_id or "-", "source": source,
                    "key": friction.key})

    def reload(self, superseded: Callable[[], bool] | None = None) -> bool:
        """Reload the rules file; keep the old rules if the new file is invalid (blocking).

        With `superseded`, the load is abandoned (False, nothing applied or counted) as
        soon as it says a newer version of the file is waiting: see `RuleReloads`.
        """
        path = self.settings.rules_path
        log.info("loading rules from %s", path or "the package")
        try:
            # A big file is hundreds of thousands of YAML nodes and index tuples, none of
            # them in a cycle: the collector would only scan them again and again.
            with gc_paused():
                ruleset = load_rules(path, superseded, _LastGood(self.settings))
                detector = make_detector(ruleset, self.settings, self.view)
                prefilter = Prefilter(detector)
        except Superseded:
            return _abandoned(path)
        except RulesError as exc:
            if superseded is not None and superseded():
                return _abandoned(path)
            metrics.RULES_RELOADS.labels("failure").inc()
            metrics.RULES_FILE_INVALID.set(1)
            self._rules_problem = (f"rules file {exc.source} is invalid ({exc.total} "
                                   "problem(s)): the previous rules stay in use")
            for line in exc.lines():
                log.error("rules reload failed, keeping the previous rules: %s", line)
            return False
        if superseded is not None and superseded():
            return _abandoned(path)
        self._rules = Rules(detector, prefilter)
        self._rules_problem = None
        metrics.RULES_FILE_INVALID.set(0)
        log_warnings(ruleset)
        metrics.RULES_RELOADS.labels("success").inc()
        _count_rules(detector)
        log.info("rules reloaded from %s: %d enabled", ruleset.source, len(self.detector.rules))
        return True


def _fallback_rules(settings: Settings, exc: RulesError) -> tuple[RuleSet, str]:
    """The rules to run on when the configured file cannot be used, and what they are."""
    for line in exc.lines():
        log.error("rules file %s cannot be used: %s", exc.source, line)
    kept = settings.last_good_rules_path
    try:
        ruleset = load_rules(kept)
    except RulesError as why:  # none kept yet (the first start), or not readable
        log.error("rules: no last good rules to fall back on (%s): running on the packaged "
                  "rules until the rules file is fixed", why.lines()[0])
        return load_rules(None), "the packaged rules"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(kept.stat().st_mtime))
    log.error("rules: running on the last rules that loaded (%s, kept %s) until the rules "
              "file is fixed", kept, when)
    return ruleset, f"the last rules that loaded ({when})"


class _LastGood:
    """Keeps a copy of the rules file that just loaded, for a start with a broken one.

    The bytes kept are those that loaded, written to a temporary file and renamed over the
    old copy, so a crash never leaves half a file: the copy is always rules that loaded.
    Not keeping it is logged, never fatal (a read-only state directory fails louder
    elsewhere).
    """

    def __init__(self, settings: Settings) -> None:
        self.path = settings.last_good_rules_path

    def __call__(self, raw: bytes) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            staged = self.path.with_name(self.path.name + ".tmp")
            staged.write_bytes(raw)
            os.replace(staged, self.path)
        except OSError as exc:
            log.warning("rules: the last good rules could not be kept in %s: %s", self.path,
                        exc.strerror or exc)


def _count_rules(detector: Detector) -> None:
    """The rule set's gauge, and each enabled rule's friction series at 0 from the start."""
    metrics.RULES_LOADED.set(len(detector.rules))
    for rule in detector.rules:
        metrics.FRICTION_EVENTS.labels(rule.name, rule.severity)


def _abandoned(path: Any) -> bool:
    log.info("rules load of %s abandoned: a newer version is waiting", path)
    return False


class RuleReloads:
    """Reloads of the rules file on a thread of their own; the newest request wins.

    Each request (a change seen on disk, SIGHUP) gets the next number. One worker loads
    the file for the newest request; a load that a newer request overtakes is abandoned
    within milliseconds (rules.py asks every few thousand YAML nodes) and never applied.
    So a fixed file that arrives while a huge or broken one is still being read is
    applied at once, and an older version never replaces a newer one: loads are applied
    one after the other, each only if no newer request came meanwhile. The worker is a
    daemon thread: a stop never waits for it.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._cond = threading.Condition()
        self._wanted = 0  # requests made
        self._taken = 0   # the request the worker last took up
        self._done = 0    # the request the worker last finished
        self._worker: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a reload; returns at once."""
        with self._cond:
            self._wanted += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="rules-reload",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until every request so far is settled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done == self._wanted, timeout)

    def _superseded(self, number: int) -> bool:
        return self._wanted != number  # one int read: no lock needed

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._taken != self._wanted)
                number = self._taken = self._wanted
            try:
                self._pipeline.reload(functools.partial(self._superseded, number))
            except Exception:  # the worker must survive anything a file can do
                log.exception("rules reload failed")
            with self._cond:
                self._done = number
                self._cond.notify_all()


def log_warnings(ruleset: RuleSet) -> None:
    """The rules file's warnings (a rule that can never fire...), as `validate` says them."""
    for warning in ruleset.warning_lines():  # the first few, and a count of the rest
        log.warning("rules: %s (healert-webhook validate explains)", warning)
