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
from typing import IO, Any, Protocol

import orjson

from healert_webhook import audit
from healert_webhook.pipeline import Pipeline
from healert_webhook.reading import EVENT_START
from healert_webhook.records import Friction, Stats, StoreResult

SOURCE = "replay"
# How the apiserver starts a log line (v1, or v1beta1 in old dumps: both are resynchronised
# after a torn write), or an event of an EventList
EVENT_LINES = (EVENT_START, b'{"level":"')
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


def open_audit_file(path: str) -> IO[bytes]:
    """An audit file opened for reading: gzip when it is, `-` for stdin."""
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


class Lines(Protocol):
    """What lines are read from: a file, stdin, or what was read ahead then the file."""

    def readline(self, limit: int = -1) -> bytes:
        """The next line, at most `limit` bytes."""
        ...


def _read_line(stream: Lines, max_line: int) -> tuple[bytes, bool]:
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
    bytes); invalid lines go to `report`.

    A file is JSON lines unless its first line is no JSON value of its own: then it may be
    one document spread over lines (a pretty-printed Event, an EventList with one item
    a line) or JSON lines whose first line was torn by a crash. When the next two lines
    each parse on their own it is JSON lines; otherwise the whole file is parsed, and it
    is read as lines only if it is no document.
    """
    first, too_long = _read_line(stream, max_line)
    if not too_long and first.strip()[:1] in (b"{", b"[") \
            and not first.startswith(EVENT_LINES) and not _parses(first):
        lines, whole = _document_or_lines(first, stream, name, report)
        if whole is not None:
            yield from whole
            return
        first, too_long = _read_line(lines, max_line)
        yield from _lines(lines, first, too_long, name=name, report=report,
                          max_line=max_line, raw=raw)
        return
    yield from _lines(stream, first, too_long, name=name, report=report, max_line=max_line,
                      raw=raw)


def _document_or_lines(first: bytes, stream: IO[bytes], name: str, report: ReadReport
                       ) -> tuple[Lines, Iterator[Batch] | None]:
    """After a first line that is no JSON value: the stream to read lines from (the first
    line included), or the document's batches when the file is one document."""
    ahead = [_read_line(stream, MAX_DOCUMENT_BYTES)[0] for _ in range(2)]
    seen = first + b"".join(ahead)
    if all(_parses(line) or not line.strip() for line in ahead) and ahead[0].strip():
        return _Chained(seen, stream), None  # JSON lines, the first one torn
    data = seen + stream.read(MAX_DOCUMENT_BYTES + 1 - len(seen))
    if len(data) > MAX_DOCUMENT_BYTES:
        report.lines += 1
        report.bad(f"{name}:1", "document_too_large")
        return stream, iter(())
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _Chained(data, stream), None  # no document: its lines, one by one
    return stream, _document_batches(doc, name, report)


class _Chained:
    """Lines of `head` (already read), then of `rest`."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readline(self, limit: int = -1) -> bytes:
        """The next line, at most `limit` bytes."""
        line = self._head.readline(limit)
        if line.endswith(b"\n") or (0 <= limit <= len(line)):
            return line
        return line + self._rest.readline(-1 if limit < 0 else limit - len(line))


def _lines(stream: Lines, first: bytes, too_long: bool, *, name: str, report: ReadReport,
           max_line: int, raw: bool) -> Iterator[Batch]:
    batch = Batch()
    lineno = 1
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


def _document_batches(doc: Any, name: str, report: ReadReport) -> Iterator[Batch]:
    """The events of a document spread over several lines, in batches."""
    report.lines += 1
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


def read_files(paths: Sequence[str], report: ReadReport, max_line: int,
               failed: list[str], *, raw: bool = False) -> Iterator[tuple[str, Batch]]:
    """The batches of every file in turn, with the file they came from. A file that
    cannot be opened or read to its end is listed in `failed` and the next one is read."""
    for path in paths:
        try:
            stream = open_audit_file(path)
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror}")
            continue
        try:
            for batch in iter_batches(stream, path, report, max_line, raw=raw):
                yield path, batch
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            failed.append(f"{path}: {exc}")
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def replay_paths(pipeline: Pipeline, paths: Sequence[str], emit: Callable[[Friction], None],
                 max_line: int, store: Callable[[list[Friction]], StoreResult] | None = None,
                 ) -> ReplayResult:
    """Replay files through the pipeline; call `emit` once per distinct friction event."""
    result = ReplayResult()
    seen: set[str] = set()
    for _path, batch in read_files(paths, result.report, max_line, result.failed_files,
                                   raw=True):
        # files from anywhere: every event parsed in full (prefilter.py)
        evaluation = pipeline.evaluate_items(batch, SOURCE, prefilter=False,
                                             received=time.time())  # read just now
        for index, reason in evaluation.bad:  # a line the pipeline could not read
            result.report.bad(batch.places[index], reason)
        del batch  # before the next one is read: one batch in memory at a time
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
    return result
