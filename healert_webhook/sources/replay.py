"""`healert-webhook replay`: run the rules over historic audit logs.

Accepts JSON-lines logs (gzipped or not), an EventList document, a single Event (also
pretty-printed over several lines), or `-` for stdin. Each friction event is printed as
one JSON line on stdout (the body the backend would receive); a summary goes to stderr.
With `--forward` the events are also queued in the outbox, deduplicated by key.
Every event is parsed in full: a file may come from a producer other than the apiserver,
which the pre-filter's one assumption (each field written once) does not hold for.
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from healert_webhook import audit, exits
from healert_webhook.config import Settings
from healert_webhook.pipeline import Pipeline
from healert_webhook.records import Friction, Stats, StoreResult

SOURCE = "replay"
# How the apiserver starts a log line, or an event of an EventList
EVENT_LINES = (b'{"kind":"Event","apiVersion":"audit.k8s.io/v1",', b'{"level":"')
BATCH_LINES = 1000
_NUL_RUN = re.compile(rb"\x00+")
MAX_DOCUMENT_BYTES = 512 * 1024 * 1024
SHOWN_PROBLEMS = 20
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ReadReport:
    """What reading saw: lines, and every invalid line (the first few with their place)."""

    lines: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    nul_bytes: int = 0  # skipped: a crash of the file's writer leaves runs of them

    def bad(self, place: str, reason: str) -> None:
        """Count an invalid line and remember where it was."""
        self.invalid[reason] += 1
        if len(self.examples) < SHOWN_PROBLEMS:
            self.examples.append(f"{place}: {reason}")


def _open(path: str) -> IO[bytes]:
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    peek = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if path.endswith(".gz") or peek == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _items(doc: Any, place: str, report: ReadReport) -> Sequence[Any]:
    try:
        items = audit.batch_items(doc)
    except audit.BadDocument:
        report.bad(place, "not_an_event")
        return []
    return items


def _read_line(stream: IO[bytes], max_line: int) -> tuple[bytes, bool]:
    """One line, or (b"", True) when it is longer than max_line (its rest is skipped)."""
    line = stream.readline(max_line + 1)
    if len(line) <= max_line or line.endswith(b"\n"):
        return line, False
    while line and not line.endswith(b"\n"):
        line = stream.readline(1024 * 1024)
    return b"", True


class Batch(list[Any]):
    """Events of a file; with `raw`, a line holding one audit Event stays its bytes (the
    pipeline parses it, if it must), and `places` says where each item came from."""

    def __init__(self) -> None:
        super().__init__()
        self.places: list[str] = []


def iter_batches(stream: IO[bytes], name: str, report: ReadReport,
                 max_line: int, raw: bool = False) -> Iterator[Batch]:
    """Events of one file, in batches (parsed, or with `raw` lines of one Event as
    bytes); invalid lines go to `report`."""
    batch = Batch()
    first, too_long = _read_line(stream, max_line)
    lineno = 1
    if not too_long and first.strip()[:1] in (b"{", b"[") \
            and not first.startswith(EVENT_LINES) and not _parses(first):
        # Either a document spread over lines, or JSON lines with a broken first line:
        # in a JSON-lines file the next line stands on its own. (A first line that starts
        # as the apiserver starts its log lines is one, torn by a crash maybe.)
        second, second_too_long = _read_line(stream, max_line)
        if second_too_long or not second.strip() or not _parses(second):
            yield from _whole_document(first + second, stream, name, report)
            return
        _account(first, False, f"{name}:1", report, batch, raw=raw)
        first, lineno = second, 2
    _account(first, too_long, f"{name}:{lineno}", report, batch, raw=raw)
    while True:
        line, too_long = _read_line(stream, max_line)
        if not line and not too_long:
            break
        lineno += 1
        _account(line, too_long, f"{name}:{lineno}", report, batch, raw=raw)
        if len(batch) >= BATCH_LINES:
            yield batch
            batch = Batch()
    if batch:
        yield batch


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _account(line: bytes, too_long: bool, place: str, report: ReadReport,
             batch: Batch, *, raw: bool) -> None:
    if b"\0" in line and not too_long:
        _account_nuls(line, place, report, batch, raw=raw)
        return
    if too_long:
        report.lines += 1
        report.bad(place, "line_too_long")
        return
    if not line.strip():
        return
    report.lines += 1
    if raw and line.startswith(EVENT_LINES):  # one Event: the pipeline reads it
        batch.append(line.rstrip(b"\r\n"))
        batch.places.append(place)
        return
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        report.bad(place, f"bad_json ({str(exc).split(':')[0]})")
        return
    items = _items(doc, place, report)
    batch.extend(items)
    batch.places.extend([place] * len(items))


def _account_nuls(line: bytes, place: str, report: ReadReport, batch: Batch, *,
                  raw: bool) -> None:
    """A line holding NUL runs (no event holds one): they are skipped, and each piece
    between them is a line of its own. A piece cut by a run keeps one NUL at its end,
    which tells the pipeline it was cut (see pipeline.resync)."""
    pieces = _NUL_RUN.split(line)
    report.nul_bytes += len(line) - sum(len(piece) for piece in pieces)
    for index, piece in enumerate(pieces):
        if index < len(pieces) - 1 and raw and piece.startswith(EVENT_LINES):
            report.lines += 1
            batch.append(piece + b"\0")  # cut: the pipeline reads it whole or resyncs
            batch.places.append(place)
        else:  # no NUL left in it
            _account(piece, False, place, report, batch, raw=raw)


def _whole_document(head: bytes, stream: IO[bytes], name: str,
                    report: ReadReport) -> Iterator[Batch]:
    """A document spread over several lines (a pretty-printed Event or EventList)."""
    data = head + stream.read(MAX_DOCUMENT_BYTES + 1 - len(head))
    report.lines += 1
    if len(data) > MAX_DOCUMENT_BYTES:
        report.bad(f"{name}:1", "document_too_large")
        return
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        report.bad(f"{name}:1", f"bad_json ({str(exc).split(':')[0]})")
        return
    items = _items(doc, f"{name}:1", report)
    for start in range(0, len(items), BATCH_LINES):
        batch = Batch()
        batch.extend(items[start:start + BATCH_LINES])
        batch.places.extend([f"{name}:1"] * len(batch))
        yield batch


@dataclass
class ReplayResult:
    """Totals of one replay run."""

    stats: Stats = field(default_factory=Stats)
    report: ReadReport = field(default_factory=ReadReport)
    printed: int = 0
    duplicates: int = 0
    queued: int = 0  # --forward: newly queued for delivery
    already_known: int = 0  # --forward: queued or delivered before
    set_aside: int = 0  # --forward: older than the backend's retention, never sent
    failed_files: list[str] = field(default_factory=list)


def replay_paths(pipeline: Pipeline, paths: Sequence[str], emit: Callable[[Friction], None],
                 max_line: int, store: Callable[[list[Friction]], StoreResult] | None = None,
                 ) -> ReplayResult:
    """Replay files through the pipeline; call `emit` once per distinct friction event."""
    result = ReplayResult()
    seen: set[str] = set()
    for path in paths:
        try:
            stream = _open(path)
        except OSError as exc:
            result.failed_files.append(f"{path}: {exc.strerror}")
            continue
        try:
            for batch in iter_batches(stream, path, result.report, max_line, raw=True):
                # files from anywhere: every event parsed in full (prefilter.py)
                evaluation = pipeline.evaluate_items(batch, SOURCE, prefilter=False,
                                               received=time.time())  # read just now
                for index, reason in evaluation.bad:  # a line the pipeline could not read
                    result.report.bad(batch.places[index], reason)
                del batch
                result.stats.merge(evaluation.stats)
                fresh = []
                for friction in evaluation.frictions:
                    if friction.key in seen:
                        result.duplicates += 1
                        continue
                    seen.add(friction.key)
                    fresh.append(friction)
                    emit(friction)
                result.printed += len(fresh)
                if store is not None and fresh:
                    stored = store(fresh)
                    result.queued += stored.stored
                    result.already_known += stored.duplicates
                    result.set_aside += stored.expired
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            result.failed_files.append(f"{path}: {exc}")
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    return result


def summary_lines(result: ReplayResult) -> list[str]:
    """The human summary printed on stderr after a replay."""
    report, stats = result.report, result.stats
    invalid_lines = sum(report.invalid.values())
    lines = [f"replay: {report.lines} lines, {stats.events} audit events, "
             f"{invalid_lines} invalid lines, {sum(stats.invalid.values())} invalid events, "
             f"{result.printed} friction events ({result.duplicates} duplicates suppressed)"]
    lines += [f"  invalid line {example}" for example in report.examples]
    if report.nul_bytes:
        lines.append(f"  skipped {report.nul_bytes} NUL bytes (left by a crash of the "
                     "writer?); the events after them were read")
    if invalid_lines > len(report.examples):
        lines.append(f"  ... and {invalid_lines - len(report.examples)} more invalid lines")
    for reason, count in sorted(stats.invalid.items()):
        lines.append(f"  invalid events: {reason}: {count}")
    for (rule, severity), count in sorted(stats.matched.items()):
        lines.append(f"  rule {rule} ({severity}): {count}")
    if stats.skipped:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items()))
        lines.append(f"  no friction: {skipped}")
    lines += [f"  cannot read {failure}" for failure in result.failed_files]
    return lines


def forward_lines(result: ReplayResult, retention_days: float) -> list[str]:
    """What `--forward` did with the friction events it found."""
    return [f"  forwarded: {result.queued} queued for delivery, {result.already_known} "
            f"already queued or delivered, {result.set_aside} set aside as older than the "
            f"backend's retention ({retention_days:g} days; `outbox dead` lists them)"]


def run_replay(settings: Settings, paths: Sequence[str], *, forward: bool) -> int:
    """The `replay` command: OK, or FAILED when a file could not be read.

    Raises RulesError for an unusable rules file, OutboxError when `--forward` cannot
    open the outbox.
    """
    outbox = None
    if forward:
        from healert_webhook.outbox import Outbox  # only --forward needs the database

        outbox = Outbox.from_settings(settings)
    try:
        pipeline = Pipeline.from_settings(settings, outbox)
        out = sys.stdout.buffer

        def emit(friction: Friction) -> None:
            out.write(orjson.dumps(friction.event) + b"\n")

        def store(found: list[Friction]) -> StoreResult:
            return pipeline.store(found, SOURCE)

        try:
            result = replay_paths(pipeline, paths, emit, settings.tail_max_line_bytes,
                                  store if outbox is not None else None)
        finally:
            out.flush()
    finally:
        if outbox is not None:
            outbox.close()
    lines = summary_lines(result)
    if outbox is not None:
        lines += forward_lines(result, settings.backend_retention_days)
    for line in lines:
        print(line, file=sys.stderr)
    return exits.FAILED if result.failed_files else exits.OK
