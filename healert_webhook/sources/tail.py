"""Follow the apiserver's audit log file: rotation, truncation, checkpoints.

The tailer reads the file in large chunks and hands each chunk's complete lines to
`Pipeline.evaluate` in one call (which parses each line once): with the native scanner,
the block of lines is sorted in one pass (`Pipeline.read_lines`) and only the lines that
must be parsed are cut out of it; without it, the lines are split first. The friction events found
since the last checkpoint and the checkpoint just after the last line read are stored in
ONE outbox transaction, so after a crash the tail resumes exactly after the last line whose
frictions are stored. While catching up, that transaction runs every CHECKPOINT_INTERVAL
seconds or CHECKPOINT_BYTES bytes (or HELD_MAX frictions), not once per chunk: each is a
synced SQLite commit. Once the tail has read all there is, it stores at once. After a
crash the lines after the checkpoint are read again, which is harmless because their
frictions (if any were stored) are deduplicated by key in the outbox.

Identity of a file: (device, inode) plus a fingerprint of its first bytes, so a deleted
file whose inode number is reused by an unrelated file is not mistaken for the old one.

Rotation, as the apiserver (lumberjack) and logrotate do it:
  rename + create (lumberjack)  the open descriptor is kept and read to its end, even after
                                the renamed file was gzipped and deleted; then the newer
                                rotated files, by their timestamp, then the new file.
  copy-truncate                 the file shrank below our position (or its first bytes
                                changed): start again at 0 of the same inode.
After a restart the checkpoint may point into a rotated file `<base>-<timestamp><ext>` or
its `.gz` (found by dev+ino+fingerprint, or by the fingerprint of the decompressed start).

Only regular files are read, and no open ever blocks: a FIFO, device or directory at the
followed path is refused at once (tailfiles.open_stream), reported in the log (once per
change), in `healert_tail_not_regular_file` and in /readyz, and the path is watched until
a regular file is there.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import threading
import time
from pathlib import Path

from healert_webhook import metrics
from healert_webhook.config import Settings, env
from healert_webhook.filewatch import NotRegularFile
from healert_webhook.pipeline import Pipeline
from healert_webhook.records import Checkpoint, Evaluation, Friction, OutboxError
from healert_webhook.sources.tailfiles import (
    FINGERPRINT_BYTES,
    GZ_ERRORS,
    Resume,
    Rotated,
    Stream,
    explain_open_error,
    file_stat,
    fingerprint,
    locate,
    newest_stamp,
    open_stream,
    read_head,
    rotated_files,
)

log = logging.getLogger(__name__)

SOURCE = "tail"
READ_SIZE = 1024 * 1024  # one os.read per chunk while catching up
CHECKPOINT_INTERVAL = 1.0  # seconds: most time an idle checkpoint lags behind
CHECKPOINT_BYTES = 8 * 1024 * 1024  # bytes read before a checkpoint while catching up
HELD_MAX = 1000  # frictions held for the next checkpoint, at most
SHOWN_BAD_LINES = 5  # bad lines logged one by one per chunk, then one summary line
_NUL_RUN = re.compile(rb"\x00+")
BACKWARD_BLOCK = 64 * 1024
RETRY_MAX = 10.0  # seconds between outbox retries, at most


class _Stopped(Exception):
    """The stop event was set while waiting for the outbox."""


# -- line bookkeeping --------------------------------------------------------------------


def _line_offsets(block: bytes, indexes: list[int], start: int) -> list[int]:
    """Byte offsets of the lines at `indexes` (ascending) of a block of lines that
    starts at offset `start`, in one pass."""
    out: list[int] = []
    at = line = 0
    for i in indexes:
        while line < i:
            at = block.index(b"\n", at) + 1
            line += 1
        out.append(start + at)
    return out


# -- the tailer --------------------------------------------------------------------------


class Tailer:
    """Follows `settings.audit_log_path` into the pipeline and the outbox."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        if pipeline.outbox is None:
            raise ValueError("the tail needs a pipeline with an outbox")
        self.path = Path(os.path.abspath(settings.audit_log_path))
        self.source = f"tail:{self.path}"
        self._pipeline = pipeline
        self._outbox = pipeline.outbox
        self._max_line = settings.tail_max_line_bytes
        self._poll = settings.tail_poll_interval
        self._from = settings.tail_from
        self._stream: Stream | None = None
        self._started = False  # the first position (checkpoint or tail_from) was decided
        # A file was finished but nothing after it opened yet (the followed path missing
        # mid-rotation): generations stamped after this come first on the next try.
        self._floor: str | None = None
        self._missing = False  # the last open failed because the file does not exist
        self._has_checkpoint = False  # one is stored (or was loaded) for our source
        self._problem: str | None = "starting"
        self._logged: str | None = None
        self._unstored = 0  # bytes processed since the last stored checkpoint
        self._held: list[Friction] = []  # found since the last checkpoint, stored with it
        self._last_store = time.monotonic()
        self._stop = threading.Event()

    # -- public ------------------------------------------------------------------------

    def ready(self) -> str | None:
        """None while following the file, else why not (for /readyz)."""
        return self._problem

    def run(self, stop: threading.Event) -> None:
        """Follow the file until `stop` is set. Blocking: run it in a thread."""
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    busy = self._step()
                except _Stopped:
                    return
                except Exception as exc:  # a bug or an odd file must not end the tail
                    log.exception("tail of %s failed; resuming from the last checkpoint",
                                  self.path)
                    self._set_problem(f"tail failed: {exc}")
                    self._reset()
                    stop.wait(1.0)  # a persistent failure must not spin
                    busy = False
                if not busy:
                    stop.wait(self._poll)
            self._flush()
        except _Stopped:
            return
        finally:
            self._close_stream()

    # -- the loop ----------------------------------------------------------------------

    def _step(self) -> bool:
        """Do one unit of work; False when there was nothing to do (time to sleep)."""
        s = self._stream
        if s is None:
            self._stream = self._open_first() if not self._started else \
                self._open_after(self._floor)
            return self._stream is not None
        try:
            data = s.read(READ_SIZE)
        except (*GZ_ERRORS, gzip.BadGzipFile) as exc:
            if s.gz is None:
                raise
            log.error("%s: cannot decompress past offset %d (%s); going on with the next "
                      "file", s.path, s.pos, exc)
            metrics.TAIL_SKIPPED.labels("bad_gzip").inc()
            data = b""
            s.live = False
        if data:
            self._consume(s, data)
            return True
        return self._at_eof(s)

    def _reset(self) -> None:
        """Forget the open file; the next step resumes from the stored checkpoint (and
        detects again what was held for it)."""
        self._close_stream()
        self._held = []
        self._started = False
        self._floor = None

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- opening -----------------------------------------------------------------------

    def _open_first(self) -> Stream | None:
        """The first file: where the checkpoint points, else the followed file."""
        try:
            cp = self._outbox.load_checkpoint(self.source)
        except OutboxError as exc:
            self._set_problem(f"cannot read the tail checkpoint: {exc}")
            return None
        if cp is not None:
            self._has_checkpoint = True
            return self._open_resume(cp)
        stream = self._open_path(live=True)
        if stream is None:
            # Nothing to follow yet: the file that appears later is new, read it whole.
            self._started = self._missing
            return None
        self._started = True
        if self._from == "end":
            self._seek_end(stream)
        log.info("tail of %s starts at offset %d (no checkpoint, from %s)", self.path,
                 stream.line_start, self._from)
        self._checkpoint(stream)
        return stream

    def _open_resume(self, cp: Checkpoint) -> Stream | None:
        for _ in range(3):  # the followed file may rotate between locate and open
            where = locate(cp, self.path)
            live = where.stamp is None and where.path == self.path
            after = newest_stamp(self.path) if live else None
            try:
                stream = open_stream(where.path, live=live, compressed=where.compressed,
                                     stamp=where.stamp)
            except OSError as exc:
                if where.path == self.path:
                    self._cannot_open(exc)
                    return None
                continue
            if where.ident is not None and (stream.dev, stream.ino) != where.ident:
                stream.close()
                continue
            stream.after = after
            self._started = True
            metrics.TAIL_NOT_REGULAR.set(0)
            self._clear_problem()
            stream.seek(where.offset)
            log.info("tail of %s resumes in %s at offset %d (%s)", self.path, where.path,
                     where.offset, where.reason)
            if where.reason not in {"checkpoint", "rotated", "compressed", "rotated_since"}:
                self._warn_resume(cp, where)
            return stream
        return None

    def _warn_resume(self, cp: Checkpoint, where: Resume) -> None:
        if where.reason == "lost":
            log.warning("the checkpointed file %s (dev %d ino %d) is gone; lines written "
                        "after offset %d in it and before %s were not read", cp.path,
                        cp.dev, cp.ino, cp.offset, where.path)
        elif where.reason == "truncated":
            metrics.TAIL_ROTATIONS.labels("truncate").inc()
        else:
            metrics.TAIL_ROTATIONS.labels("replaced").inc()

    def _cannot_open(self, exc: OSError) -> None:
        """The followed path did not open: say why (logged once per change of reason)."""
        metrics.TAIL_NOT_REGULAR.set(1 if isinstance(exc, NotRegularFile) else 0)
        self._set_problem(explain_open_error(self.path, exc))

    def _open_path(self, *, live: bool) -> Stream | None:
        after = newest_stamp(self.path)  # before the open: see Stream.after
        try:
            stream = open_stream(self.path, live=live)
        except OSError as exc:
            # A FIFO (or device) there is no file yet either: the one put there later is
            # new, read whole.
            self._missing = isinstance(exc, FileNotFoundError | NotRegularFile)
            self._cannot_open(exc)
            return None
        self._missing = False
        metrics.TAIL_NOT_REGULAR.set(0)
        self._clear_problem()
        stream.after = after
        return stream

    def _open_live(self, offset: int) -> Stream | None:
        stream = self._open_path(live=True)
        if stream is not None:
            stream.seek(offset)
            log.info("following %s from offset %d", self.path, offset)
            if not self._has_checkpoint:
                # The file appeared after a start without checkpoint: record it at once,
                # so a restart resumes in it even after it was rotated.
                self._checkpoint(stream)
        return stream

    def _seek_end(self, s: Stream) -> None:
        """Start after the last complete line (a line being written is read whole)."""
        size = os.fstat(s.fd).st_size
        at = size
        while at > 0 and size - at <= self._max_line:
            start = max(0, at - BACKWARD_BLOCK)
            block = os.pread(s.fd, at - start, start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                s.seek(start + nl + 1)
                return
            at = start
        if at == 0:
            s.seek(0)
            return
        s.seek(size)  # the last line is longer than the limit: skip the rest of it
        s.skipping = True

    # -- reading -----------------------------------------------------------------------

    def _consume(self, s: Stream, data: bytes) -> None:
        """Take a chunk: complete lines go to the pipeline, the rest waits; NUL runs end
        the line before them and are skipped (see `_skip_nuls`)."""
        if b"\0" not in data:  # nearly always: one memchr per chunk
            self._take(s, data)
            return
        at = 0
        for run in _NUL_RUN.finditer(data):
            if run.start() > at:
                self._take(s, data[at:run.start()])
            self._skip_nuls(s, run.end() - run.start())
            at = run.end()
        if at < len(data):
            self._take(s, data[at:])

    def _skip_nuls(self, s: Stream, count: int) -> None:
        """Skip a run of NUL bytes, which no audit log line holds (JSON escapes them).

        A crash of the writer leaves them where data was to be (a file extended before
        its data reached the disk). The line before them is cut there: it goes to the
        pipeline marked so (a trailing NUL), which reads it whole if it is whole and
        resynchronises otherwise; the next line starts after the run. Logged once per
        run, however it is read; counted in healert_tail_nul_bytes_skipped_total.
        """
        at = s.pos
        metrics.TAIL_BYTES.inc(count)
        metrics.TAIL_NUL_BYTES.inc(count)
        if s.skipping:
            self._skipped_long(s)
            s.skipping = False
        elif s.pending:
            cut = b"".join(s.pending)
            s.pending.clear()
            s.pending_len = 0
            s.pos += 1  # the first NUL ends the line: a newline's place in the block
            count -= 1
            self._process(s, cut + b"\n", cut=True)
        s.pos += count
        self._unstored += s.pos - s.line_start
        s.line_start = s.pos
        if not s.in_nuls:
            log.warning("%s: NUL bytes at offset %d where an audit event should be (left by "
                        "a crash of the writer?): skipped up to the next event", s.path, at)
            s.in_nuls = True

    def _take(self, s: Stream, data: bytes) -> None:
        """Take bytes holding no NUL (see `_consume`)."""
        s.in_nuls = False
        s.pos += len(data)
        metrics.TAIL_BYTES.inc(len(data))
        if s.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skipped_long(s)
            s.skipping = False
            end = s.pos - len(data) + nl + 1
            self._unstored += end - s.line_start
            s.line_start = end
            data = data[nl + 1:]
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(s, data)
            return
        block: bytes | memoryview
        if s.pending:
            block = b"".join([*s.pending, data[: last + 1]])
            s.pending.clear()
            s.pending_len = 0
        else:
            block = memoryview(data)[: last + 1]  # no copy of the chunk
        if last + 1 < len(data):
            self._hold(s, data[last + 1:])
        self._process(s, block, caught_up=len(data) < READ_SIZE)

    def _hold(self, s: Stream, data: bytes) -> None:
        """Keep an incomplete line; past the limit, drop it and skip to its end."""
        if not data:
            return
        if s.pending_len + len(data) > self._max_line:
            s.pending.clear()
            s.pending_len = 0
            s.skipping = True
            return
        s.pending.append(data)
        s.pending_len += len(data)

    def _skipped_long(self, s: Stream) -> None:
        metrics.TAIL_SKIPPED.labels("too_long").inc()
        log.warning("%s: line at offset %d is longer than %d bytes (%s): skipped", s.path,
                    s.line_start, self._max_line, env("tail_max_line_bytes"))

    def _process(self, s: Stream, block: bytes | memoryview, caught_up: bool = True,
                  cut: bool = False) -> None:
        """Parse and detect the complete lines in `block` (one pipeline call); store the
        frictions with the next checkpoint. With `cut`, the last line was ended by a NUL
        run, not by its newline: it goes to the pipeline with a NUL at its end."""
        start = s.line_start
        received = time.time()  # read now
        native = None if cut else self._pipeline.read_lines(block, self._max_line)
        if native is not None:  # the lines sorted in one native pass, none split out
            count, read, too_long = native
            metrics.TAIL_LINES.inc(count)
            found = self._pipeline.evaluate(read, SOURCE, received)
            bad = sorted([*found.bad, *((i, "too_long") for i in too_long)])
        else:
            found, bad = self._evaluate_split(block, cut, received)
        if bad:
            self._report_bad(s, block, bad, start)
        s.line_start = start + len(block)
        self._unstored += len(block)
        if s.gz is None:
            metrics.TAIL_LAG.set(max(0, os.fstat(s.fd).st_size - s.line_start))
        self._held += found.frictions
        if self._due() or (self._held and (caught_up or len(self._held) >= HELD_MAX)):
            self._checkpoint(s)

    def _evaluate_split(self, block: bytes | memoryview, cut: bool, received: float
                        ) -> tuple[Evaluation, list[tuple[int, str]]]:
        """`_process`'s reading without the native lines reader, or for a block cut by
        NULs: the block split into lines, those over the limit left out. The evaluation
        and the bad lines, by their index in the block."""
        lines = bytes(block).split(b"\n")
        lines.pop()  # the block ends with a newline: the last piece is empty
        if cut:
            lines[-1] += b"\0"
        metrics.TAIL_LINES.inc(len(lines))
        kept: list[int] | None = None
        if len(block) > self._max_line:  # only then can a line be over the limit
            kept = [i for i, line in enumerate(lines) if len(line) <= self._max_line]
            items = [lines[i] for i in kept]
        else:
            items = lines
        found = self._pipeline.evaluate_items(items, SOURCE, received=received)
        bad = [(kept[i] if kept is not None else i, reason) for i, reason in found.bad]
        if kept is not None and len(kept) < len(lines):
            bad += [(i, "too_long") for i in sorted(set(range(len(lines))) - set(kept))]
            bad.sort()
        return found, bad

    def _report_bad(self, s: Stream, block: bytes | memoryview, bad: list[tuple[int, str]],
                    start: int) -> None:
        """Log the first bad lines of `block` (read at offset `start`) with their offsets;
        count what the pipeline did not."""
        end = start + len(block)
        offsets = _line_offsets(bytes(block), [i for i, _ in bad[:SHOWN_BAD_LINES]], start)
        for (_i, reason), offset in zip(bad, offsets, strict=False):
            if reason != "blank":
                log.warning("%s: line at offset %d skipped: %s", s.path, offset,
                            _describe(reason, self._max_line))
        for reason in ("too_long", "blank"):  # not events: the pipeline counted them nowhere
            count = sum(1 for _i, r in bad if r == reason)
            if count:
                metrics.TAIL_SKIPPED.labels(reason).inc(count)
        if len(bad) > SHOWN_BAD_LINES:
            log.warning("%s: %d more bad lines between offsets %d and %d", s.path,
                        len(bad) - SHOWN_BAD_LINES, start, end)

    # -- end of the data for now -------------------------------------------------------

    def _at_eof(self, s: Stream) -> bool:
        """At the end of what was written: look for rotation, or finish a rotated file."""
        if s.live:
            return self._check_live(s)
        self._finish(s)
        self._stream = self._next_after(s)
        return True

    def _check_live(self, s: Stream) -> bool:
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            # Not proof of a rotation (EACCES after a remount, EIO): keep reading what we
            # hold rather than start some file again from 0.
            log.warning("cannot stat %s: %s; still reading the open file", self.path,
                        exc.strerror)
            return False
        if st is None or (st.st_dev, st.st_ino) != (s.dev, s.ino):
            # Renamed (or removed): new writes go elsewhere. Drain our descriptor first.
            metrics.TAIL_ROTATIONS.labels("rename").inc()
            s.live = False
            # The descriptor still reads the renamed file, which may have been empty when
            # it was opened: fingerprint its head now, to know it again as a .gz.
            s.fp = fingerprint(s.head())
            if self._learn_rotated_name(s):
                log.info("%s was rotated (now %s); reading it to its end", self.path, s.path)
            else:
                log.warning("%s was rotated to a name not found beside it; after reading it "
                            "to its end, every generation rotated since it was opened is "
                            "read (events read twice are dropped as duplicates)", self.path)
            return True
        size = os.fstat(s.fd).st_size
        head = s.head()
        if size < s.pos or not s.fp.matches(head):
            self._truncated(s, size)
            return True
        if s.fp.length < FINGERPRINT_BYTES and len(head) > s.fp.length:
            s.fp = fingerprint(head)  # the file grew: fingerprint more of it
        metrics.TAIL_LAG.set(max(0, size - s.line_start))
        self._flush_if_due()
        return False

    def _truncated(self, s: Stream, size: int) -> None:
        metrics.TAIL_ROTATIONS.labels("truncate").inc()
        log.warning("%s was truncated (size %d, we were at %d): reading it again from 0; "
                    "lines written between our last read and the truncation are only in "
                    "the copy", self.path, size, s.pos)
        s.seek(0)
        s.fp = fingerprint(s.head())
        self._checkpoint(s)

    def _learn_rotated_name(self, s: Stream) -> bool:
        """Find the name our file was rotated to, so newer generations follow in order."""
        for gen in rotated_files(self.path):
            if gen.plain is not None and _same_file(gen.plain, s):
                s.path, s.stamp = gen.plain, gen.stamp
                return True
        if s.fp.length == 0:
            return False
        for gen in reversed(rotated_files(self.path)):
            if gen.gz is not None and gen.plain is None:
                head = read_head(gen.gz, compressed=True)
                if head is not None and s.fp.matches(head):
                    s.path, s.stamp = gen.gz, gen.stamp
                    return True
        return False

    def _finish(self, s: Stream) -> None:
        """The end of a rotated file: an unterminated last line is a truncated write."""
        if s.skipping:
            self._skipped_long(s)
        elif s.pending:
            metrics.INVALID_EVENTS.labels(SOURCE, "truncated_line").inc()
            log.warning("%s: the last line (offset %d, %d bytes) has no newline and the file "
                        "was rotated: a truncated write, skipped", s.path, s.line_start,
                        s.pending_len)
        s.pending.clear()
        s.pending_len = 0
        s.skipping = False
        self._unstored += s.pos - s.line_start
        s.line_start = s.pos
        self._checkpoint(s)
        s.close()
        self._stream = None

    def _next_after(self, s: Stream) -> Stream | None:
        """The generation after a finished file: a newer rotated file, else the live one.

        Generations are known by their stamps: those after the finished file's own, or,
        when the name it was rotated to was not found, those after the newest there was
        when it was opened live (its own among them).
        """
        return self._open_after(s.stamp if s.stamp is not None else s.after, s)

    def _open_after(self, floor: str | None, finished: Stream | None = None) -> Stream | None:
        """The oldest generation stamped after `floor`, else the followed file. None when
        neither opens yet; `floor` is kept for the next try."""
        self._floor = floor
        if floor is not None:
            stream = self._open_newer(floor)
            if stream is not None:
                self._floor = None
                return stream
        stream = self._open_live(0)
        if stream is None:
            return None
        self._floor = None
        if floor is not None:
            # A rotation between the look above and the open renamed a file that comes
            # before the one just opened: read that first.
            missed = self._open_newer(floor, before=stream)
            if missed is not None:
                stream.close()
                return missed
        if finished is not None and (stream.dev, stream.ino) == (finished.dev, finished.ino) \
                and stream.fp == finished.fp:
            stream.seek(finished.pos)  # the very file we finished is back at the path: go on
        return stream

    def _open_newer(self, floor: str, before: Stream | None = None) -> Stream | None:
        """The oldest generation stamped after `floor` that opens; with `before`, only
        one older than that open file (which may itself have been rotated by now)."""
        for gen in rotated_files(self.path):
            if gen.stamp <= floor:
                continue
            if before is not None and gen.plain is not None and \
                    _same_file(gen.plain, before):
                return None
            stream = self._open_generation(gen)
            if stream is not None:
                return stream
        return None

    def _open_generation(self, gen: Rotated) -> Stream | None:
        # Prefer the plain file: its .gz may still be being written. Once the plain file
        # is gone, the .gz is complete (lumberjack removes the original after compressing).
        for path, compressed in ((gen.plain, False), (gen.gz, True)):
            if path is None:
                continue
            try:
                stream = open_stream(path, live=False, compressed=compressed,
                                     stamp=gen.stamp)
            except OSError:
                continue
            log.info("tail of %s continues with the rotated file %s", self.path, path)
            return stream
        return None

    # -- checkpoints -------------------------------------------------------------------

    def _due(self) -> bool:
        return self._unstored >= CHECKPOINT_BYTES or (
            self._unstored > 0 and time.monotonic() - self._last_store >= CHECKPOINT_INTERVAL)

    def _flush_if_due(self) -> None:
        s = self._stream
        if s is not None and (self._held or self._due()):  # at the end: store what we hold
            self._checkpoint(s)
        age = time.monotonic() - self._last_store if self._unstored else 0.0
        metrics.TAIL_CHECKPOINT_AGE.set(age)

    def _flush(self) -> None:
        """On a clean stop: record how far we got."""
        s = self._stream
        if s is not None and self._unstored:
            try:
                self._pipeline.store(self._held, SOURCE, self._make_checkpoint(s))
            except OutboxError as exc:
                log.warning("tail checkpoint not saved at stop: %s", exc)

    def _make_checkpoint(self, s: Stream) -> Checkpoint:
        if s.gz is None and s.fp.length < FINGERPRINT_BYTES:
            head = s.head()
            if s.fp.matches(head):
                s.fp = fingerprint(head)
        return Checkpoint(self.source, str(s.path), s.dev, s.ino, s.line_start,
                          s.fp.encode())

    def _checkpoint(self, s: Stream) -> None:
        """Store the held frictions and the position after them in one transaction; retry
        until it works (reading stops meanwhile: nothing is read that cannot be stored)."""
        cp = self._make_checkpoint(s)
        frictions = self._held
        delay = 0.5
        while True:
            try:
                self._pipeline.store(frictions, SOURCE, cp)
                break
            except OutboxError as exc:
                self._set_problem(f"outbox write failed, tail paused: {exc}")
                if self._stop.wait(delay):
                    raise _Stopped from exc
                delay = min(delay * 2, RETRY_MAX)
        if self._problem is not None and self._problem.startswith("outbox"):
            self._clear_problem()
        self._unstored = 0
        self._held = []
        self._has_checkpoint = True
        self._last_store = time.monotonic()
        metrics.TAIL_CHECKPOINT_AGE.set(0)

    # -- readiness and its log lines ---------------------------------------------------

    def _set_problem(self, problem: str) -> None:
        if problem != self._logged:
            log.warning("%s", problem)
            self._logged = problem
        self._problem = problem

    def _clear_problem(self) -> None:
        if self._logged is not None:
            log.info("following %s", self.path)
        self._logged = None
        self._problem = None


def _same_file(path: Path, s: Stream) -> bool:
    st = file_stat(path)
    return st is not None and (st.st_dev, st.st_ino) == (s.dev, s.ino)


def _describe(reason: str, max_line: int) -> str:
    return {
        "bad_json": "not JSON",
        "not_an_object": "JSON but not an object",
        "truncated_line": "a write cut short (a crash of the writer?); any whole event "
                          "after it was read",
        "too_long": f"longer than {max_line} bytes ({env('tail_max_line_bytes')})",
    }.get(reason, reason)
