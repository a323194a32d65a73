"""Notice when a file's content changed on disk, including Kubernetes' `..data` swap.

Mounted Secrets and ConfigMaps are updated by pointing a `..data` symlink at a new
directory: the path keeps its name but resolves to a new inode. The rules file, the
certificate pair, the token file and the backend key file are all watched this way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


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
        self._sig = signature(path)
        self._digest = self._hash()

    def _hash(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def changed(self, force: bool = False) -> bool:
        """True when the content differs from the last call (blocking: run in a thread)."""
        sig = signature(self.path)
        if sig == self._sig and not force:
            return False
        self._sig = sig
        digest = self._hash()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True

    def forget(self) -> None:
        """Make the next `changed()` re-read the file (after a failed reload: try again)."""
        self._sig = None
        self._digest = None
