"""The memory budget for webhook request bodies being read, parsed and evaluated at once."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


@dataclass
class _Waiter:
    size: int
    holding: bool
    granted: asyncio.Future[None]


class BodyBudget:
    """Bytes of memory that request bodies may take at once across all requests.

    A request reserves what its body takes: its size while it arrives, then what parsing
    it costs (batches.py). Without a shared budget fifteen concurrent large batches
    would need gigabytes. A request that cannot get its share within `wait` seconds is
    answered 503 with Retry-After before anything of it is stored, which client-go
    retries within the same attempt; one that could never fit is answered 413.

    Shares are given in the order they were asked for: a newcomer never passes a share
    that waits, else a large batch could be refused on every resend (and dropped by the
    apiserver) while smaller ones keep taking the room it waits for. A request that
    already holds a share (`holding`) and must grow to finish goes first, before every
    newcomer: the memory a waiting newcomer needs may be the very share it holds.
    """

    def __init__(self, limit: int, wait: float = 5.0) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._line: deque[_Waiter] = deque()

    async def take(self, size: int, *, holding: bool = False) -> bool:
        """Reserve `size` bytes; False when they did not become free in time. `holding`:
        the request already holds a share and grows it (it goes before newcomers)."""
        if size > self.limit:
            return False  # could never fit: waiting would only hold up the line
        if (holding or not self._line) and self.used + size <= self.limit:
            self.used += size
            return True
        waiter = _Waiter(size, holding, asyncio.get_running_loop().create_future())
        self._line.append(waiter)
        try:
            await asyncio.wait((waiter.granted,), timeout=self.wait)
        except BaseException:  # cancelled (the body's deadline): leave the line
            self._leave(waiter)
            raise
        if waiter.granted.done():
            return True
        self._leave(waiter)
        return False

    async def give(self, size: int) -> None:
        """Return `size` reserved bytes and give the waiting shares what now fits."""
        self.used -= size
        self._serve()

    def _leave(self, waiter: _Waiter) -> None:
        """Take `waiter` out of the line (giving back a share granted meanwhile)."""
        if waiter.granted.done():
            self.used -= waiter.size
        else:
            waiter.granted.cancel()
            self._line.remove(waiter)
        self._serve()  # it may have held up shares behind it

    def _serve(self) -> None:
        """Give the waiting shares what fits: the holders' first (any that fits, in
        order), then the newcomers' in order, none while a holder still waits."""
        for waiter in [w for w in self._line if w.holding]:
            if self.used + waiter.size <= self.limit:
                self._grant(waiter)
        if any(w.holding for w in self._line):
            return
        while self._line and self.used + self._line[0].size <= self.limit:
            self._grant(self._line[0])

    def _grant(self, waiter: _Waiter) -> None:
        self._line.remove(waiter)
        self.used += waiter.size
        waiter.granted.set_result(None)
