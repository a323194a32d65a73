"""The agent's own small files: read them without ever blocking, notice when they change.

Mounted Secrets and ConfigMaps are updated by pointing a `..data` symlink at a new
directory: the path keeps its name but resolves to a new inode. The rules file, the
certificate pair, the token file and the backend key file are all watched this way.

Every read goes through `open_regular`: a path an operator (or an attacker with write
access to the directory) turned into a FIFO, a device or a socket would block `open()`
forever, or read without end; here it is refused at once with `NotRegularFile`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


# A file modified this close to the time it was last read may have changed again within
# the same timestamp tick (coarse on most filesystems, 2 s on FAT): hash it again.
RACY_NS = 2_000_000_000


class NotRegularFile(OSError):
    """The path is no regular file; `strerror` says what it is instead."""


def file_kind(mode: int) -> str:
    """What a stat mode describes, in words ("a regular file", "a FIFO (named pipe)"...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular_fd(path: Path) -> int:
    """A descriptor of `path` opened for reading, only if it is a regular file (symlinks
    followed); blocking reads, close-on-exec. The caller closes it.

    The open itself never blocks: it is non-blocking (a FIFO without a writer opens at
    once), and `fstat` on the descriptor decides before anything is read, so there is no
    window between checking and opening. Raises OSError (NotRegularFile for the rest).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(0, f"is {file_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path) -> BufferedReader:
    """`path` opened for reading, only if it is a regular file (see `open_regular_fd`).
    Raises OSError (NotRegularFile for the rest)."""
    fd = open_regular_fd(path)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The content of the regular file at `path`: at most `limit` + 1 bytes are read, so a
    caller can tell a file over its limit. Raises OSError as `open_regular` does."""
    with open_regular(path) as handle:
        return handle.read(limit + 1)


@dataclass(frozen=True)
class Signature:
    """What `os.stat` says about the file a path resolves to."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


def signature(path: Path) -> Signature | None:
    """The stat signature of the file `path` resolves to (symlinks followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Signature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Tells when a file's content changed: stat signature first, then a content hash.

    The stat of the resolved path catches replacement by rename and Kubernetes' `..data`
    symlink swap (new inode); the hash avoids reloading when only the metadata changed and
    catches an in-place rewrite that kept the size within one mtime tick.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashed_ns = 0
        self._sig = signature(path)
        self._digest = self._hash()

    def _hash(self) -> str | None:
        self._hashed_ns = time.time_ns()  # before reading: a later write is after it
        try:
            with open_regular(self.path) as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return None

    def changed(self, force: bool = False) -> bool:
        """True when the content differs from the last call (blocking: run in a thread)."""
        sig = signature(self.path)
        if sig == self._sig and not force and not self._racy(sig):
            return False
        self._sig = sig
        digest = self._hash()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True

    def _racy(self, sig: Signature | None) -> bool:
        """True when the file's mtime is within a tick of the last hash: a same-size
        rewrite then leaves the signature as it was."""
        return sig is not None and sig.mtime_ns >= self._hashed_ns - RACY_NS

    def forget(self) -> None:
        """Make the next `changed()` re-read the file (after a failed reload: try again)."""
        self._sig = None
        self._digest = None
