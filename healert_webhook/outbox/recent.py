"""The keys this process committed to the outbox lately, in memory.

The apiserver resends a whole batch whenever it did not see the answer to it in time,
and so does anything that retries (a proxy, an operator's replay): every friction event
of such a batch is already in the outbox. Answering that from memory spares the storing
thread, its lock and a read of the file, and spares the event loop the hand-off of the
GIL to that thread and back, which costs more than the read.

Only a committed transaction adds keys, and a key is held for the dedup window from its
commit, never longer: within it the outbox itself would call the key a duplicate (it is
queued, delivered within the window, or a dead letter; a dead letter evicted early by the
count bound, or a row an operator dropped with `healert-webhook outbox`, is then not
queued again by a resend, which is what dropping it meant). Bounded by count, oldest
first: a key forgotten early is only answered the slower way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

RECENT_KEYS = 16384  # ~2.5 MiB of keys: some thousands of batches' friction events


class RecentKeys:
    """Keys committed within the last `window` seconds (monotonic), at most `most`."""

    def __init__(self, window: float, most: int = RECENT_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.most = most
        self._clock = clock
        self._until: dict[str, float] = {}  # insertion order: the oldest commit first
        self._lock = threading.Lock()

    def add(self, keys: Iterable[str]) -> None:
        """Remember `keys`, just committed."""
        until = self._clock() + self.window
        with self._lock:
            held = self._until
            for key in keys:
                held.pop(key, None)  # to the young end
                held[key] = until
            excess = len(held) - self.most
            for key in [key for key, _ in zip(held, range(excess), strict=False)]:
                del held[key]

    def hold_all(self, keys: Sequence[str]) -> bool:
        """Whether every one of `keys` was committed within the window (none: False)."""
        if not keys:
            return False
        now = self._clock()
        get = self._until.get  # a read of one dict entry needs no lock
        return all(get(key, 0.0) > now for key in keys)

    def __len__(self) -> int:
        return len(self._until)
