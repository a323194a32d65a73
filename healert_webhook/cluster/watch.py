"""List+watch of one resource, keeping the view current (what client-go's reflector does).

No Python Kubernetes client keeps a cache current by itself: lightkube's watch restarts
from "now" after a 410 (so what was deleted meanwhile is never seen) and asks for no
bookmarks; kubernetes_asyncio retries a 410 once at the same version, then raises; kr8s
re-watches at the same expired version. So this module does the reflector's loop on
the HTTP client lightkube builds (connect.py):

- list in pages (`limit`, `continue`), store every object, tombstone what the list
  lacks; pods and namespaces in the metadata-only representation
  (PartialObjectMetadataList), controllers whole for their pod template's labels,
  autoscalers whole for their scale target;
- watch from the list's resourceVersion with bookmarks (`allowWatchBookmarks`), so a
  quiet resource's version stays recent and a reconnect rarely needs a relist; each
  watch asks the server to end it after 5 to 10 minutes (as client-go does) and is
  resumed from the last version seen;
- a 410 Gone (the version was compacted away) means a relist, at once;
- any other failure (connection refused, 5xx, 403, a line that is not JSON) marks the
  resource not synced and retries after a backoff that doubles up to a cap, with jitter.
  The cap is 10 s, not client-go's 30 s: until a resource is listed again, events about
  it are charged by the name rules, and one agent's nine watches cost an apiserver
  nothing. The reflectors of one apiserver share a `Wake`: the first to list again ends
  the others' backoff (the apiserver answers), so the view is whole again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson

from healert_webhook import metrics
from healert_webhook.cluster.kinds import Kind
from healert_webhook.cluster.meta import Extractor, Meta, scale_target, template_labels
from healert_webhook.cluster.view import Key, View
from healert_webhook.logs import Limiter

log = logging.getLogger(__name__)
# Every resource fails alike while the apiserver is away: a few lines a minute say so.
_failure_lines = Limiter(log, per_interval=8, interval=60.0,
                         what="cluster view list or watch failures")

# The apiserver's metadata-only representations; plain JSON objects are accepted too (an
# aggregated API may not offer them), since only `metadata` is read either way.
PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
PARTIAL = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
JSON = "application/json"


@dataclass(frozen=True)
class Timing:
    """Paces of the watches (the defaults are client-go's; tests shorten them)."""

    page_size: int = 500
    watch_seconds: float = 300.0  # each watch lasts between this and twice this
    backoff_base: float = 0.8
    backoff_max: float = 10.0
    connect_timeout: float = 10.0
    read_margin: float = 30.0  # past the watch's own end: the connection is dead
    min_watch: float = 1.0  # a watch that ends sooner having delivered nothing is a failure


class Wake:
    """Ends the backoff of the reflectors of one apiserver when one of them lists again.

    Created and used on the view's own loop only.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        """The apiserver answers again: wake every reflector waiting out a backoff."""
        self._event.set()
        self._event = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds, or until the next `fire`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), delay)


class Expired(Exception):
    """The resource version is too old (410 Gone): a relist is needed."""


class ApiFailure(Exception):
    """The apiserver answered with an error; `reason` is short and safe to show."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def status_failure(code: int, body: bytes) -> ApiFailure:
    """An ApiFailure from an error answer (a Status object when the apiserver wrote it)."""
    reason = ""
    try:
        status = orjson.loads(body)
        if isinstance(status, dict) and isinstance(status.get("reason"), str):
            reason = status["reason"]
    except orjson.JSONDecodeError:
        pass
    return ApiFailure(code, reason or {401: "Unauthorized", 403: "Forbidden"}.get(code, "error"))


def failure_reason(exc: BaseException) -> str:
    """A bounded label for the metrics: forbidden, unauthorized, http_5xx, transport..."""
    if isinstance(exc, ApiFailure):
        if exc.code == 200:
            return "empty_watch"
        if exc.code == 403:
            return "forbidden"
        if exc.code == 401:
            return "unauthorized"
        return f"http_{exc.code // 100}xx"
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx2.TransportError):
        return "transport"
    if isinstance(exc, orjson.JSONDecodeError | ValueError | TypeError | KeyError):
        return "bad_answer"
    return "other"


class Reflector:
    """Keeps one resource of the view current; `run()` until cancelled."""

    def __init__(self, client: httpx2.AsyncClient, kind: Kind, view: View,
                 extractor: Extractor, *, timing: Timing,
                 on_object: Callable[[Meta], None] = lambda _: None,
                 rng: random.Random | None = None, wake: Wake | None = None) -> None:
        self.client = client
        self.wake = wake
        self.kind = kind
        self.view = view
        self.extractor = extractor
        self.timing = timing
        self.on_object = on_object
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.path = kind.collection()
        self.accept_list = PARTIAL_LIST if kind.metadata_only else JSON
        self.accept = PARTIAL if kind.metadata_only else JSON
        self.version: str | None = None  # None: the next step is a (re)list

    async def run(self) -> None:
        """List, then watch, forever; never raises but for cancellation."""
        resource = self.kind.resource
        attempt = 0
        why = "start"
        fresh = False  # listed, and no watch has delivered anything since
        while True:
            try:
                if self.version is None:
                    metrics.CLUSTER_RELISTS.labels(resource, why).inc()
                    self.version = await self.list()
                    if attempt and self.wake is not None:
                        self.wake.fire()  # the others need not wait out their backoff
                    attempt = 0
                    fresh = True
                delivered = await self.watch()
                if delivered:
                    attempt = 0
                    fresh = False
                why = "error"
            except Expired:
                log.info("cluster view: %s: resource version expired, listing again", resource)
                self.version = None
                why = "expired"
                if fresh:  # expired at once after a list: never relist in a tight loop
                    await asyncio.sleep(self.backoff(attempt))
                    attempt += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is retried; none may stop the view
                reason = failure_reason(exc)
                metrics.CLUSTER_WATCH_ERRORS.labels(resource, reason).inc()
                self.view.set_state(resource, False, _shown(exc))
                delay = self.backoff(attempt)
                attempt += 1
                _failure_lines.warning("cluster view: %s: %s; retrying in %.1f s", resource,
                                       _shown(exc), delay)
                why = "error"
                if self.wake is not None:
                    await self.wake.sleep(delay)
                else:
                    await asyncio.sleep(delay)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after `attempt` failures in a row: doubling, capped, jittered."""
        ceiling = min(self.timing.backoff_max,
                      self.timing.backoff_base * 2.0 ** min(attempt, 30))
        return ceiling / 2 + self.rng.random() * ceiling / 2

    async def list(self) -> str:
        """Store every object (page by page), tombstone the missing; the list's version."""
        resource = self.kind.resource
        seen: set[Key] = set()
        params: dict[str, str | int] = {"limit": self.timing.page_size}
        version: str | None = None
        while True:
            answer = await self.client.get(self.path, params=params,
                                           headers={"Accept": self.accept_list})
            if answer.status_code == 410 and "continue" in params:
                # The continue token outlived the apiserver's compaction: start over.
                params = {"limit": self.timing.page_size}
                seen.clear()
                version = None
                continue
            if answer.status_code != 200:
                raise status_failure(answer.status_code, answer.content)
            body = orjson.loads(answer.content)
            for item in body.get("items") or ():
                meta = self.record(item)
                if meta is not None:
                    self.view.put(resource, meta)
                    seen.add((meta.namespace, meta.name))
                    self.on_object(meta)
            listing = body.get("metadata") or {}
            version = version or listing.get("resourceVersion")
            token = listing.get("continue")
            if not token:
                break
            params["continue"] = token
            await asyncio.sleep(0)  # one page at a time, the loop's other tasks between
        if not isinstance(version, str) or not version:
            raise ValueError("the list carries no resourceVersion")
        gone = self.view.relisted(resource, seen)
        self.view.set_state(resource, True)
        log.info("cluster view: %s listed: %d objects (%d gone since the last list)",
                 resource, len(seen), gone)
        return version

    async def watch(self) -> bool:
        """One watch from `self.version` until the server ends it; True if it delivered."""
        assert self.version is not None
        lasts = self.timing.watch_seconds * (1 + self.rng.random())
        params = {"watch": "1", "resourceVersion": self.version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(int(lasts))}
        timeout = httpx2.Timeout(self.timing.connect_timeout,
                                 read=lasts + self.timing.read_margin)
        started = time.monotonic()
        delivered = False
        async with self.client.stream("GET", self.path, params=params, timeout=timeout,
                                      headers={"Accept": self.accept}) as answer:
            if answer.status_code == 410:
                raise Expired
            if answer.status_code != 200:
                raise status_failure(answer.status_code, await answer.aread())
            self.view.set_state(self.kind.resource, True)
            async for line in answer.aiter_lines():
                if line.strip():
                    self.event(orjson.loads(line))
                    delivered = True
        if not delivered and time.monotonic() - started < self.timing.min_watch:
            raise ApiFailure(200, "watch ended at once")
        return delivered

    def record(self, obj: Any) -> Meta | None:
        """The record of one listed or watched object (None if it is not one)."""
        return record_of(self.kind, self.extractor, obj)

    def event(self, event: Any) -> None:
        """Apply one watch event to the view; raise Expired on a 410 ERROR event."""
        kind = event["type"]
        obj = event["object"]
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise Expired
            raise ApiFailure(code if isinstance(code, int) else 500,
                             str(obj.get("reason") or "watch error"))
        metadata = obj.get("metadata") or {}
        version = metadata.get("resourceVersion")
        metrics.CLUSTER_WATCH_EVENTS.labels(self.kind.resource, _event_label(kind)).inc()
        if kind != "BOOKMARK":
            meta = self.record(obj)
            if meta is not None and kind == "DELETED":
                self.view.delete(self.kind.resource, meta)
            elif meta is not None and kind in ("ADDED", "MODIFIED"):
                self.view.put(self.kind.resource, meta)
                self.on_object(meta)
        if isinstance(version, str) and version:
            self.version = version


def record_of(kind: Kind, extractor: Extractor, obj: Any) -> Meta | None:
    """The record of one object of `kind` as listed or watched (None if it is not one)."""
    if not isinstance(obj, dict):
        return None
    template = None if kind.metadata_only or kind.scales else template_labels(obj)
    target = scale_target(obj) if kind.scales else None
    return extractor.record(kind.kind, obj.get("metadata"), template, target)


def _event_label(kind: Any) -> str:
    return kind.lower() if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK") else "other"


def _shown(exc: BaseException) -> str:
    """A short description of a failure for logs and /readyz (no URL, no token)."""
    if isinstance(exc, ApiFailure):
        return f"apiserver answered {exc}"
    if isinstance(exc, httpx2.HTTPError):
        return f"{type(exc).__name__} talking to the apiserver"
    return f"{type(exc).__name__} reading the apiserver's answer"
