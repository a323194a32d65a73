"""Request loops against the apiserver, bounded in count and time, on loopback only."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from conformance.harness.cluster import ControlPlane


@dataclass
class LoadResult:
    """Status codes seen and the wall time taken."""

    codes: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Requests that got an answer."""
        return sum(self.codes.values())


def get_many(cp: ControlPlane, identity: str, path: str, count: int, *, threads: int = 1,
             pause: float = 0.0, deadline: float = 600.0,
             on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """GET `path` `count` times as `identity`, spread over `threads` connections.

    `on_progress(n)` is called by the first thread after its n-th request, so a caller can
    act in the middle of the run (kill an agent). Stops at `deadline` seconds whatever the
    count.
    """
    result = LoadResult()
    lock = threading.Lock()
    started = time.monotonic()
    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def worker(index: int, share: int) -> None:
        with cp.client_for(identity) as client:
            for n in range(1, share + 1):
                if time.monotonic() - started > deadline:
                    break
                try:
                    code = client.get(path).status_code
                except Exception as exc:  # counted and reported by the caller
                    with lock:
                        result.errors.append(repr(exc))
                    continue
                with lock:
                    result.codes[code] += 1
                if index == 0 and on_progress is not None:
                    on_progress(n)
                if pause:
                    time.sleep(pause)

    workers = [threading.Thread(target=worker, args=(i, share), daemon=True)
               for i, share in enumerate(shares)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=deadline + 60)
    result.seconds = time.monotonic() - started
    return result


def get_until(cp: ControlPlane, identity: str, path: str, stop: threading.Event, *,
              pause: float = 0.05, deadline: float = 600.0) -> LoadResult:
    """GET `path` as `identity` on one connection, `pause` seconds apart, until `stop` is
    set (or `deadline` seconds passed)."""
    result = LoadResult()
    started = time.monotonic()
    with cp.client_for(identity) as client:
        while not stop.is_set() and time.monotonic() - started < deadline:
            try:
                result.codes[client.get(path).status_code] += 1
            except Exception as exc:  # counted and reported by the caller
                result.errors.append(repr(exc))
            stop.wait(pause)
    result.seconds = time.monotonic() - started
    return result
