"""Owners of kinds the view does not watch (an Argo Rollout, an operator's CRD), fetched once.

When a watched object's controller (an autoscaler's scale target) is of another kind,
its metadata is fetched by GET
(metadata only) and kept in the view, so resolution can read its labels and follow its
own owner, without any I/O of its own. Discovery (`/apis/<group>/<version>`) maps the
reference's apiVersion and kind to the resource's plural name and scope, once per
group version. A fetch that fails (404: gone; 403: the ClusterRole does not grant `get`
on that resource) is not tried again for a while; the chain then ends at that owner's
name, which is what resolution does without the fetch anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import httpx2
import orjson

from healert_webhook import metrics
from healert_webhook.cluster.kinds import prefix, split_api_version, watched_kind
from healert_webhook.cluster.meta import Extractor, Meta, Owner
from healert_webhook.cluster.view import FetchedKey, View
from healert_webhook.cluster.watch import PARTIAL, status_failure

log = logging.getLogger(__name__)

MAX_PENDING = 1_000  # owners waiting to be fetched; more are counted and left out
RETRY_AFTER = 300.0  # seconds before a failed fetch or discovery is tried again
REFRESH_AFTER = 600.0  # seconds a fetched owner is trusted before it is fetched again


class OwnerFetcher:
    """Fetches the controllers of other kinds that watched objects point at."""

    def __init__(self, client: httpx2.AsyncClient, view: View, extractor: Extractor) -> None:
        self.client = client
        self.view = view
        self.extractor = extractor
        self.queue: asyncio.Queue[tuple[FetchedKey, str]] = asyncio.Queue()
        self.pending: set[FetchedKey] = set()
        self.fetched_at: OrderedDict[FetchedKey, float] = OrderedDict()
        self.failed: dict[FetchedKey, float] = {}
        # apiVersion -> {kind: (plural, namespaced)}, or the time discovery failed
        self.discovery: dict[str, dict[str, tuple[str, bool]] | float] = {}
        self.forbidden_logged: set[str] = set()

    def want(self, meta: Meta) -> None:
        """Queue `meta`'s controller (or scale target) for a fetch when it is of a kind not
        watched."""
        ref = meta.up()
        if ref is None or watched_kind(ref.api_version, ref.kind) is not None:
            return
        key = owner_key(ref, meta.namespace)
        now = time.monotonic()
        if key in self.pending or now < self.failed.get(key, 0.0):
            return
        fetched = self.fetched_at.get(key)
        if fetched is not None and now - fetched < REFRESH_AFTER:
            return
        if len(self.pending) >= MAX_PENDING:
            metrics.CLUSTER_OWNER_FETCHES.labels("queue_full").inc()
            return
        self.pending.add(key)
        self.queue.put_nowait((key, ref.api_version))

    async def run(self) -> None:
        """Fetch queued owners one at a time, forever."""
        while True:
            key, api_version = await self.queue.get()
            try:
                result = await self.fetch(key, api_version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed fetch only costs that owner's labels
                result = "error"
                log.debug("cluster view: fetching %s %s failed: %s", key[1], key[3],
                          type(exc).__name__)
            finally:
                self.pending.discard(key)
            metrics.CLUSTER_OWNER_FETCHES.labels(result).inc()
            if result != "fetched":
                self.failed[key] = time.monotonic() + RETRY_AFTER
                if len(self.failed) > MAX_PENDING * 10:
                    self.failed.clear()

    async def fetch(self, key: FetchedKey, api_version: str) -> str:
        """GET one owner's metadata into the view; the outcome for the metrics."""
        group, kind, namespace, name = key
        found = await self.resource_of(api_version, kind)
        if found is None:
            return "unknown_kind"
        plural, namespaced = found
        version = split_api_version(api_version)[1]
        where = f"/namespaces/{namespace}" if namespaced and namespace else ""
        answer = await self.client.get(f"{prefix(group, version)}{where}/{plural}/{name}",
                                       headers={"Accept": PARTIAL})
        if answer.status_code == 404:
            return "not_found"
        if answer.status_code == 403:
            if plural not in self.forbidden_logged:
                self.forbidden_logged.add(plural)
                log.warning("cluster view: may not get %s.%s (owners of watched objects): "
                            "grant get on it to follow those owners' labels",
                            plural, group or "core")
            return "forbidden"
        if answer.status_code != 200:
            raise status_failure(answer.status_code, answer.content)
        body = orjson.loads(answer.content)
        meta = self.extractor.record(kind, body.get("metadata"))
        if meta is None:
            return "error"
        stored = (group, kind, namespace if namespaced else "", name)
        self.view.put_fetched(stored, meta)
        self.fetched_at.pop(key, None)
        self.fetched_at[key] = time.monotonic()
        while len(self.fetched_at) > MAX_PENDING * 10:
            self.fetched_at.popitem(last=False)
        self.want(meta)  # its own controller, if of another kind too
        return "fetched"

    async def resource_of(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """(plural, namespaced) of `kind` in `api_version`, from discovery (cached)."""
        known = self.discovery.get(api_version)
        if isinstance(known, float) and time.monotonic() < known:
            return None
        if not isinstance(known, dict):
            known = await self._discover(api_version)
            if known is None:
                self.discovery[api_version] = time.monotonic() + RETRY_AFTER
                return None
            self.discovery[api_version] = known
        return known.get(kind)

    async def _discover(self, api_version: str) -> dict[str, tuple[str, bool]] | None:
        group, version = split_api_version(api_version)
        answer = await self.client.get(prefix(group, version),
                                       headers={"Accept": "application/json"})
        if answer.status_code != 200:
            return None
        body: Any = orjson.loads(answer.content)
        kinds: dict[str, tuple[str, bool]] = {}
        for item in body.get("resources") or ():
            plural = item.get("name")
            if isinstance(plural, str) and "/" not in plural and isinstance(item.get("kind"), str):
                kinds.setdefault(item["kind"], (plural, item.get("namespaced") is True))
        return kinds


def owner_key(ref: Owner, namespace: str) -> FetchedKey:
    """The view's key for an owner of another kind referenced from `namespace`."""
    return split_api_version(ref.api_version)[0], ref.kind, namespace, ref.name
