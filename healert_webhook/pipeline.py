"""The one detection pipeline every source feeds: parse, detect, store, count.

Sources hand over what they read — the raw JSON of single events (log lines) or events
already parsed (the items of an EventList body or of a replayed document) — and the
pipeline does the rest the same way for all three: parse each raw event once, run the
active rules, record the counts, store the friction events in the outbox (with a tail
checkpoint in the same transaction), count the duplicates the outbox suppressed, and log
one line per friction event stored.

`evaluate` and `store` are the two halves; `process` does both. The tail evaluates chunks
as it reads them and stores at checkpoints; replay stores only with `--forward`.
Everything here is blocking (the outbox fsyncs): the webhook calls it from a worker thread.
The active Detector is swapped in one assignment on reload, so a batch is always evaluated
by one complete rule set, never half of one.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import orjson
from simdjson import Array, Object

from healert_webhook import audit, batches, metrics
from healert_webhook.config import Settings
from healert_webhook.detect import Detector
from healert_webhook.logs import Limiter
from healert_webhook.outbox import Outbox
from healert_webhook.prefilter import Prefilter, Unreadable, parse
from healert_webhook.records import Checkpoint, Evaluation, Friction, Stats, StoreResult
from healert_webhook.rules import RulesError, RuleSet, Superseded, load_rules

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


class BadBody(ValueError):
    """A webhook body that is not an audit EventList, Event or array; `reason` is a label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# How an apiserver log line starts (audit.k8s.io/v1, or v1beta1 in old files). Outside a
# JSON string a quote is structure, so these bytes start an object wherever they appear.
EVENT_START = b'{"kind":"Event","apiVersion":"audit.k8s.io/'
RESYNC_TRIES = 32  # event starts tried in one line that did not parse


def _object_at(view: memoryview) -> dict[str, Any] | None:
    """The JSON object that is exactly `view`, or None."""
    try:
        item = orjson.loads(view)
    except orjson.JSONDecodeError:
        return None
    return item if item.__class__ is dict else None


def resync(raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """The whole events in a log line that did not parse, and how many bytes before them
    are junk (0: none).

    A writer that dies mid-write leaves a torn line without newline, and the next writer
    appends its lines right after it: the torn part and a whole event read as one line.
    Each whole event there starts with EVENT_START and runs to the end of the line (or to
    the next whole event), so the line is taken apart from its end: the earliest start
    whose rest parses as one object is the last event, and so on before it. What precedes
    the first event found is junk, unless it is itself a whole event that only lost its
    newline. A line ending in NUL was cut by a run of NULs (see the tail): the same
    applies, and the line itself may be a whole event. At most RESYNC_TRIES starts are
    tried per line, so a line full of nested starts cannot cost more than that many
    parses.
    """
    body = raw.rstrip(b"\0")
    view = memoryview(body)
    if len(body) < len(raw):  # cut by NULs rather than ended by a newline
        whole = _object_at(view)
        if whole is not None:
            return [whole], 0
    found: list[dict[str, Any]] = []
    end, tries = len(body), 0
    while tries < RESYNC_TRIES:
        start = body.find(EVENT_START, 1, end)
        item = None
        while start > 0 and tries < RESYNC_TRIES:
            tries += 1
            item = _object_at(view[start:end])
            if item is not None:
                break
            start = body.find(EVENT_START, start + 1, end)
        if item is None:
            break
        found.append(item)
        end = start
    if found:
        first = _object_at(view[:end])
        if first is not None:
            found.append(first)
            end = 0
    found.reverse()
    return found, end


def parse_each(items: Iterable[Any], bad: list[tuple[int, str]],
               prefilter: Prefilter | None = None,
               ruled_out: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """Parse the raw items (bytes) one at a time, those the pre-filter cannot rule out;
    parsed items pass.

    Each event is parsed as it is needed and dropped once evaluated, so a batch never has
    to be in memory parsed as a whole. An item ruled out from its bytes is counted in
    `ruled_out` under its skip reason and never parsed. An item that is not JSON, or JSON
    but not an object, is skipped and listed in `bad` with its reason; an empty or blank
    one (a log line) as "blank", which no metric counts: it is no event. A raw item that
    does not parse is searched for whole events first (`resync`): those are evaluated,
    and the junk before them is listed as "truncated_line" (as is a line cut by NULs).
    """
    loads = orjson.loads
    skip = prefilter.skip if prefilter is not None else None
    for index, raw in enumerate(items):
        if raw.__class__ is bytes:
            if skip is not None and ruled_out is not None:
                reason = skip(raw)
                if reason is not None:
                    ruled_out[reason] += 1
                    continue
            try:
                item = loads(raw)
            except orjson.JSONDecodeError:
                if not raw.strip():
                    bad.append((index, "blank"))
                    continue
                found, junk = resync(raw)
                if junk or not found:
                    cut = found or raw.endswith(b"\0")
                    bad.append((index, "truncated_line" if cut else "bad_json"))
                yield from found
                continue
        else:
            item = raw
        if item.__class__ is dict:
            yield item
        else:
            bad.append((index, "not_an_object"))


def _read(body: bytes, plan: batches.Reading, prefilter: Prefilter, most: int, *,
          ruled_out: Counter[str], bad: list[tuple[int, str]],
          allowance: int | None) -> Iterator[dict[str, Any]]:
    """The candidate events of a body, document by document (see `evaluate_body`)."""
    if plan.groups is None:
        doc = parse(body)
        try:
            items = audit.batch_items(doc, Object, Array)
        except audit.BadDocument as exc:
            raise BadBody(f"not an audit EventList, Event or array: {exc}",
                          "bad_shape") from None
        if len(items) > most:
            raise batches.TooManyItems(len(items))
        yield from prefilter.candidates(items, ruled_out, bad, 0, allowance)
        return
    seen = 0
    for index, span in enumerate(plan.groups):
        group = parse(batches.group_text(body, span))
        if group.__class__ is not Array:
            raise Unreadable("a group is no array")
        if seen + len(group) > most:
            del group
            raise batches.TooManyItems(seen + _count(body, plan.groups[index:]))
        start, seen = seen, seen + len(group)
        yield from prefilter.candidates(group, ruled_out, bad, start, allowance)
        del group


def _count(body: bytes, spans: Sequence[batches.Span]) -> int:
    """How many events the groups hold (for the answer to a batch that is too large)."""
    total = 0
    for span in spans:
        group = parse(batches.group_text(body, span))
        total += len(group) if group.__class__ is Array else 0
        del group
    return total


def parse_items(items: Sequence[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
    """All events of `items` parsed at once, and the bad ones (see `parse_each`)."""
    bad: list[tuple[int, str]] = []
    return list(parse_each(items, bad)), bad


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
    for audit_id, error in stats.failures:
        _failure_lines.error("an audit event from %s could not be evaluated and was skipped "
                             "(counted as invalid, reason evaluation_error): auditID=%s: %s",
                             source, audit_id or "-", error)


def make_detector(ruleset: Any, settings: Settings) -> Detector:
    """A Detector for `ruleset` with the settings' entity and own namespaces."""
    return Detector(ruleset, entity_namespace=settings.entity_namespace,
                    own_namespace=settings.k8s_namespace)


class Pipeline:
    """The active rules and the outbox; every source calls into it (see the docstring)."""

    def __init__(self, settings: Settings, detector: Detector,
                 outbox: Outbox | None = None) -> None:
        self.settings = settings
        # swapped in one assignment on reload: a batch sees one rule set, never half
        self._rules = (detector, Prefilter(detector))
        self.outbox = outbox
        metrics.RULES_LOADED.set(len(detector.rules))

    @classmethod
    def from_settings(cls, settings: Settings, outbox: Outbox | None = None) -> Pipeline:
        """Load the configured rules (raises RulesError) and build the pipeline."""
        with gc_paused():  # see Pipeline.reload
            detector = make_detector(load_rules(settings.rules_path), settings)
        return cls(settings, detector, outbox)

    @property
    def detector(self) -> Detector:
        """The active rules."""
        return self._rules[0]

    @property
    def prefilter(self) -> Prefilter:
        """The pre-filter of the active rules."""
        return self._rules[1]

    def evaluate(self, items: Iterable[Any], source: str, prefilter: bool = True,
                 received: float | None = None) -> Evaluation:
        """Parse and detect; record the counts. Never raises on any input.

        Without `prefilter` every event is parsed in full: for files another producer
        may have written (see prefilter.py). `received` is the Unix time the source got
        the items (now when not given): event times far ahead of it are repaired.
        """
        detector, rule_out = self._rules  # one rule set for the whole batch
        stats = Stats()
        bad: list[tuple[int, str]] = []
        ruled_out: Counter[str] = Counter()
        when = time.time() if received is None else received
        with gc_paused():
            frictions = detector.detect(
                parse_each(items, bad, rule_out if prefilter else None, ruled_out), stats,
                when)
        return _evaluation(frictions, stats, ruled_out, bad, source)

    def evaluate_body(self, body: bytes, plan: batches.Reading, source: str,
                      most: int, allowance: int | None = None, *,
                      received: float | None = None) -> Evaluation | None:
        """Like `evaluate` for a webhook body read by simdjson as `plan` says: only the
        events the pre-filter cannot rule out are parsed. None (nothing counted) when
        simdjson does not take a document of it: then it must be parsed whole.

        Raises TooManyItems (before anything is evaluated, unless the body is read in
        groups), BadBody for a document that is no batch of events, and NeedsMore when
        a candidate needs more memory than `allowance` (see Prefilter.candidates).
        `received`: see `evaluate` (the webhook's batch arrived just before this call).
        """
        detector, prefilter = self._rules
        when = time.time() if received is None else received
        stats = Stats()
        ruled_out: Counter[str] = Counter()
        bad: list[tuple[int, str]] = []
        try:
            with gc_paused():
                frictions = detector.detect(
                    _read(body, plan, prefilter, most, ruled_out=ruled_out, bad=bad,
                          allowance=allowance), stats, when)
        except Unreadable:
            return None
        return _evaluation(frictions, stats, ruled_out, bad, source)

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

    def process(self, items: Sequence[Any], source: str,
                checkpoint: Checkpoint | None = None) -> tuple[Evaluation, StoreResult]:
        """Evaluate the items and store what they yield, in one call."""
        found = self.evaluate(items, source)
        return found, self.store(found.frictions, source, checkpoint)

    @staticmethod
    def _log_stored(frictions: Sequence[Friction], result: StoreResult, source: str) -> None:
        fresh = result.stored_keys
        for friction in frictions:
            if friction.key in fresh:
                event = friction.event
                _stored_lines.info(
                    "friction stored: rule=%s actor=%s entity=%s auditID=%s source=%s key=%s",
                    friction.rule, event.get("actor", "-"), event.get("entity_ref"),
                    friction.audit_id or "-", source, friction.key)

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
                ruleset = load_rules(path, superseded)
                detector = make_detector(ruleset, self.settings)
                prefilter = Prefilter(detector)
        except Superseded:
            return _abandoned(path)
        except RulesError as exc:
            if superseded is not None and superseded():
                return _abandoned(path)
            metrics.RULES_RELOADS.labels("failure").inc()
            for line in exc.lines():
                log.error("rules reload failed, keeping the previous rules: %s", line)
            return False
        if superseded is not None and superseded():
            return _abandoned(path)
        self._rules = (detector, prefilter)
        log_warnings(ruleset)
        metrics.RULES_RELOADS.labels("success").inc()
        metrics.RULES_LOADED.set(len(self.detector.rules))
        log.info("rules reloaded from %s: %d enabled", ruleset.source, len(self.detector.rules))
        return True


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


def parse_body(body: bytes) -> Sequence[Any]:
    """The items of a webhook body: an EventList, a single Event or a JSON array.

    Raises BadBody for a body that is not one of those.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody(f"body is not valid JSON: {exc}", "bad_json") from None
    try:
        return audit.batch_items(doc)
    except audit.BadDocument as exc:
        raise BadBody(f"not an audit EventList, Event or array: {exc}", "bad_shape") from None
