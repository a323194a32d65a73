"""The view's own room: a thread with its own event loop running the watches.

The watches never run on the loop that answers the webhook, so a relist of a large
cluster (pages of JSON decoded one after another) cannot delay an answer, and the
cluster being slow or gone never blocks ingest: readers only look up the view's maps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable

from healert_webhook import metrics
from healert_webhook.cluster.connect import Connection
from healert_webhook.cluster.kinds import WATCHED
from healert_webhook.cluster.meta import Extractor
from healert_webhook.cluster.owners import OwnerFetcher
from healert_webhook.cluster.view import View
from healert_webhook.cluster.watch import Reflector, Timing, Wake

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 1.0  # tombstone expiry and gauges


class ClusterView:
    """Runs the watches that keep `view` current, on a thread of its own."""

    def __init__(self, connection: Connection, tombstone_window: float,
                 label_keys: Iterable[str], annotation_keys: Iterable[str] = (),
                 timing: Timing | None = None) -> None:
        self.connection = connection
        self.extractor = Extractor(label_keys, annotation_keys)
        self.view = View(tombstone_window, label_keys=self.extractor.label_keys,
                         annotation_keys=self.extractor.annotation_keys)
        self.timing = timing or Timing()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        """Start the thread; returns at once (the first lists happen in the background)."""
        log.info("cluster view: watching %s through %s", self.connection.server,
                 self.connection.source)
        self._thread = threading.Thread(target=self._main, name="cluster-view", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watches and the thread (waits up to `timeout` seconds)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        client = self.connection.client(self.timing.connect_timeout)
        fetcher = OwnerFetcher(client, self.view, self.extractor)
        wake = Wake()
        tasks = [asyncio.create_task(Reflector(client, kind, self.view, self.extractor,
                                               timing=self.timing, on_object=fetcher.want,
                                               wake=wake).run(),
                                     name=f"watch-{kind.resource}")
                 for kind in WATCHED]
        tasks.append(asyncio.create_task(fetcher.run(), name="owners"))
        tasks.append(asyncio.create_task(self._sweep(), name="sweep"))
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()

    async def _sweep(self) -> None:
        while True:
            self.view.sweep()
            publish(self.view)
            await asyncio.sleep(SWEEP_INTERVAL)

    def describe(self) -> str:
        """One line for /readyz's body: synced, or which resources are not and why."""
        return describe(self.view)


def publish(view: View) -> None:
    """Set the view's gauges from its current state."""
    for state in view.status():
        metrics.CLUSTER_SYNCED.labels(state.resource).set(1 if state.synced else 0)
        metrics.CLUSTER_OBJECTS.labels(state.resource).set(state.objects)
    metrics.CLUSTER_TOMBSTONES.set(view.tombstones())
    metrics.CLUSTER_FETCHED_OWNERS.set(len(view.fetched))


def describe(view: View) -> str:
    """`cluster view: synced (N objects)` or what is not synced, without URLs or secrets."""
    states = view.status()
    behind = [s for s in states if not s.synced]
    if not behind:
        return f"cluster view: synced ({sum(s.objects for s in states)} objects)"
    parts = []
    for state in behind:
        why = state.error or ("listing" if not state.listed else "reconnecting")
        parts.append(f"{state.resource} ({why})")
    return "cluster view: not synced: " + ", ".join(parts)
