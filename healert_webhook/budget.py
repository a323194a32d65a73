"""The memory budget for webhook request bodies being read, parsed and evaluated at once."""

from __future__ import annotations

import asyncio


class BodyBudget:
    """Bytes of memory that request bodies may take at once across all requests.

    A request reserves what its body takes: its size while it arrives, then what parsing
    it costs (batches.py). Without a shared budget fifteen concurrent large batches
    would need gigabytes. A request that cannot get its share within `wait` seconds is
    answered 503 with Retry-After before anything of it is stored, which client-go
    retries within the same attempt; one that could never fit is answered 413.
    """

    def __init__(self, limit: int, wait: float = 5.0) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._freed = asyncio.Condition()

    async def take(self, size: int) -> bool:
        """Reserve `size` bytes; False when they did not become free in time."""
        if self.used + size <= self.limit:
            self.used += size
            return True
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(
                    lambda: self.used + size <= self.limit), self.wait)
            except TimeoutError:
                return False
            self.used += size
            return True

    async def give(self, size: int) -> None:
        """Return `size` reserved bytes and wake the requests waiting for them."""
        self.used -= size
        if size:
            async with self._freed:
                self._freed.notify_all()
