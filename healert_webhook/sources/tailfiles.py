"""The files a tailer follows: identity, rotated generations, where to resume, streams.

A file is known by (device, inode) plus a fingerprint of its first bytes, so an unrelated
file that reuses a deleted file's inode number is not taken for it. Rotated generations
are `<base>-<timestamp><ext>`, plain or gzipped (lumberjack's names). `locate` decides
where a checkpoint resumes; `Stream` reads a plain file or the decompressed stream of a
gzipped one with the same interface. Nothing here parses events or touches the outbox.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import stat
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from healert_webhook.filewatch import NotRegularFile, open_regular, open_regular_fd
from healert_webhook.records import Checkpoint

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 4096
_STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}"
GZ_ERRORS = (OSError, EOFError, zlib.error)


# -- fingerprints ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """A digest of a file's first `length` bytes (fewer than FINGERPRINT_BYTES while the
    file is shorter). Encoded as `<length>:<hex>` so a file that grew still matches."""

    length: int
    digest: str

    def encode(self) -> str:
        """The text stored in `Checkpoint.fingerprint`."""
        return f"{self.length}:{self.digest}"

    @classmethod
    def decode(cls, text: str) -> Fingerprint | None:
        """Parse `encode`'s output; None for anything else."""
        length, sep, digest = text.partition(":")
        if not sep or not length.isdigit():
            return None
        return cls(int(length), digest)

    def matches(self, head: bytes) -> bool:
        """True when `head` (a file's first bytes) starts with the fingerprinted bytes."""
        return len(head) >= self.length and _digest(head[: self.length]) == self.digest


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(head: bytes) -> Fingerprint:
    """The fingerprint of a file whose first bytes are `head`."""
    head = head[:FINGERPRINT_BYTES]
    return Fingerprint(len(head), _digest(head))


def read_head(path: Path, compressed: bool = False) -> bytes | None:
    """The first FINGERPRINT_BYTES of a file (decompressed for .gz); None if unreadable."""
    try:
        with open_regular(path) as f:  # a FIFO named like a rotated file never blocks us
            if compressed:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    return gz.read(FINGERPRINT_BYTES)
            return f.read(FINGERPRINT_BYTES)
    except (*GZ_ERRORS, gzip.BadGzipFile):
        return None


# -- rotated files -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rotated:
    """One rotated generation `<base>-<stamp><ext>`: the plain file and/or its `.gz`."""

    stamp: str
    plain: Path | None
    gz: Path | None


def _rotated_pattern(base: Path) -> re.Pattern[str]:
    stem, ext = os.path.splitext(base.name)  # lumberjack: audit.log -> audit-<stamp>.log
    return re.compile(re.escape(stem) + "-(" + _STAMP + ")" + re.escape(ext) + r"(\.gz)?")


def stamp_of(base: Path, name: str) -> str | None:
    """The rotation timestamp in a rotated file's name, or None if it is not one."""
    found = _rotated_pattern(base).fullmatch(os.path.basename(name))
    return found.group(1) if found else None


def rotated_files(base: Path) -> list[Rotated]:
    """The rotated generations beside `base`, oldest first (the stamps sort as text)."""
    pattern = _rotated_pattern(base)
    plain: dict[str, Path] = {}
    packed: dict[str, Path] = {}
    try:
        names = os.listdir(base.parent)
    except OSError:
        return []
    for name in names:
        found = pattern.fullmatch(name)
        if found:
            (packed if found.group(2) else plain)[found.group(1)] = base.parent / name
    return [Rotated(s, plain.get(s), packed.get(s)) for s in sorted(plain.keys() | packed)]


def newest_stamp(base: Path) -> str:
    """The stamp of the newest rotated generation beside `base`; "" when there is none."""
    generations = rotated_files(base)
    return generations[-1].stamp if generations else ""


# -- where to resume ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resume:
    """Where to continue after a restart: a file, an offset in it, and why."""

    path: Path
    offset: int
    compressed: bool = False
    stamp: str | None = None  # the rotation timestamp; None for the followed file itself
    ident: tuple[int, int] | None = None  # (dev, ino) the path had when it was chosen
    reason: str = "checkpoint"


def file_stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def locate(cp: Checkpoint, base: Path) -> Resume:
    """Find the file a checkpoint points into: the followed file, a rotated file, a .gz.

    A file matches when its (dev, ino) AND its first bytes match; a `.gz` matches by the
    decompressed first bytes and the offset counts in the decompressed stream. When the
    followed file has the right (dev, ino) but other first bytes, the inode was reused by
    a new file: read that from 0 (unless the old content turns up among the rotated files).
    """
    fp = Fingerprint.decode(cp.fingerprint)
    ident = (cp.dev, cp.ino)
    st = file_stat(base)
    reused = False
    if st is not None and (st.st_dev, st.st_ino) == ident:
        head = read_head(base)
        if fp is not None and head is not None and fp.matches(head):
            if st.st_size < cp.offset:
                return Resume(base, 0, ident=ident, reason="truncated")
            return Resume(base, cp.offset, ident=ident)
        reused = True
    found = _locate_rotated(cp, base, fp)
    if found is not None:
        return found
    if reused:
        return Resume(base, 0, ident=ident, reason="fingerprint_mismatch")
    # The checkpointed file is gone. If its name told its rotation time, newer
    # generations are still known; otherwise the followed file is all we can trust.
    stamp = stamp_of(base, cp.path)
    if stamp is not None:
        for gen in rotated_files(base):
            if gen.stamp > stamp:
                return _generation_start(gen, "lost")
    elif fp is not None and fp.length == 0 and cp.offset == 0 and cp.updated is not None:
        found = _rotated_since(base, cp.updated)
        if found is not None:
            return found
    return Resume(base, 0, reason="lost")


def _rotated_since(base: Path, saved: float) -> Resume | None:
    """The start of the first generation rotated after `saved`, the time a checkpoint
    was saved at the start of the followed file while it was empty. Its lines were all
    written after that save, so that generation is this very file (or, if it was pruned,
    the next): no line before it was ever in the file. A .gz can be told by its first
    bytes only, and this file had none. The stamps are the writer's rotation times in UTC
    (lumberjack's default, the apiserver's), on the clock of the node the tail runs on."""
    since = (time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(saved))
             + f".{int(saved * 1000) % 1000:03d}")
    for gen in rotated_files(base):
        if gen.stamp > since:
            return _generation_start(gen, "rotated_since")
    return None


def _locate_rotated(cp: Checkpoint, base: Path, fp: Fingerprint | None) -> Resume | None:
    if fp is None:
        return None
    generations = rotated_files(base)
    for gen in generations:
        if gen.plain is None:
            continue
        st = file_stat(gen.plain)
        if st is not None and (st.st_dev, st.st_ino) == (cp.dev, cp.ino):
            head = read_head(gen.plain)
            if head is not None and fp.matches(head):
                return Resume(gen.plain, cp.offset, stamp=gen.stamp,
                              ident=(st.st_dev, st.st_ino), reason="rotated")
    if fp.length == 0:
        return None  # an empty fingerprint would match any .gz
    for gen in generations:
        if gen.gz is None:
            continue
        head = read_head(gen.gz, compressed=True)
        if head is not None and fp.matches(head):
            return Resume(gen.gz, cp.offset, compressed=True, stamp=gen.stamp,
                          reason="compressed")
    return None


def _generation_start(gen: Rotated, reason: str) -> Resume:
    if gen.plain is not None:
        return Resume(gen.plain, 0, stamp=gen.stamp, reason=reason)
    assert gen.gz is not None  # a generation has at least one of the two
    return Resume(gen.gz, 0, compressed=True, stamp=gen.stamp, reason=reason)


# -- one open file -----------------------------------------------------------------------


@dataclass
class Stream:
    """One opened file (or decompressed .gz) and the line state within it."""

    path: Path
    fd: int
    dev: int
    ino: int
    live: bool  # opened as the followed path and not seen rotated away yet
    stamp: str | None = None
    gz: gzip.GzipFile | None = None
    pos: int = 0  # bytes consumed from the stream
    line_start: int = 0  # offset of the first byte not yet processed
    pending: list[bytes] = field(default_factory=list)  # the incomplete last line
    pending_len: int = 0
    skipping: bool = False  # inside a line longer than the limit: discard to its end
    in_nuls: bool = False  # the last byte read was a NUL (a run is logged once)
    fp: Fingerprint = field(default_factory=lambda: fingerprint(b""))
    # Opened live: the newest rotated generation just before the open ("" for none).
    # Every generation stamped later was rotated since: this file's own, and newer ones.
    after: str | None = None

    def read(self, size: int) -> bytes:
        """Up to `size` more bytes; b"" at the end for now."""
        if self.gz is not None:
            return self.gz.read(size)
        return os.read(self.fd, size)

    def head(self) -> bytes:
        """The first bytes of the file, read without moving the position."""
        return os.pread(self.fd, FINGERPRINT_BYTES, 0)

    def seek(self, offset: int) -> None:
        """Position the stream (for .gz: decompress up to the offset)."""
        if self.gz is not None:
            self.gz.seek(offset)
        else:
            os.lseek(self.fd, offset, os.SEEK_SET)
        self.pos = self.line_start = offset
        self.pending.clear()
        self.pending_len = 0
        self.skipping = False
        self.in_nuls = False

    def close(self) -> None:
        """Release the descriptor."""
        if self.gz is not None:
            self.gz.close()
        os.close(self.fd)


def open_stream(path: Path, *, live: bool, compressed: bool = False,
                stamp: str | None = None) -> Stream:
    """Open a regular file for reading without ever blocking in `open` (a FIFO at the
    path is refused, not waited on); raises OSError (FileNotFoundError, PermissionError,
    NotRegularFile...)."""
    fd = open_regular_fd(path)
    try:
        st = os.fstat(fd)
        gz: gzip.GzipFile | None = None
        if compressed:
            # Decompress from our own descriptor: the .gz may be deleted meanwhile.
            gz = gzip.GzipFile(fileobj=os.fdopen(fd, "rb", closefd=False), mode="rb")
            head = gz.read(FINGERPRINT_BYTES)
            gz.seek(0)
        else:
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
    except (*GZ_ERRORS, gzip.BadGzipFile) as exc:
        os.close(fd)
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
            raise
        raise OSError(f"{path}: not a readable gzip file: {exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return Stream(path, fd, st.st_dev, st.st_ino, live, stamp, gz, fp=fingerprint(head))


def explain_open_error(path: Path, exc: OSError) -> str:
    """A sentence that says why `path` cannot be followed, naming owners and our uid."""
    if isinstance(exc, FileNotFoundError):
        if not path.parent.is_dir():
            return f"waiting for {path}: directory {path.parent} does not exist"
        return f"waiting for {path}: no such file"
    if isinstance(exc, PermissionError):
        return _explain_denied(path)
    if isinstance(exc, NotRegularFile):
        return f"cannot follow {path}: it {exc.strerror}; waiting for a regular file there"
    return f"cannot open {path}: {exc.strerror or exc}"


def _explain_denied(path: Path) -> str:
    me = f"uid {os.geteuid()} gid {os.getegid()} groups {sorted(os.getgroups())}"
    blocking = _unsearchable_ancestor(path)
    if blocking is not None:
        st = file_stat(blocking)
        if st is None:
            return f"permission denied: cannot reach {path} (running as {me})"
        return (f"permission denied: directory {blocking} has mode "
                f"{stat.S_IMODE(st.st_mode):04o} and owner uid {st.st_uid} gid {st.st_gid}; "
                f"running as {me}: run with a uid/gid that may read it")
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"permission denied on {path}: {exc.strerror} (running as {me})"
    return (f"permission denied: {path} has mode {stat.S_IMODE(st.st_mode):04o} and owner "
            f"uid {st.st_uid} gid {st.st_gid}; running as {me}: run with that uid "
            "(or a group that may read it)")


def _unsearchable_ancestor(path: Path) -> Path | None:
    """The outermost directory above `path` that we may not enter, if any."""
    for directory in reversed(path.parents):
        if not os.access(directory, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            return directory
    return None
