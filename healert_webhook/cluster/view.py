"""The view: an in-memory map of the cluster's workloads' metadata, with tombstones.

One writer, many readers. The watches (watch.py) write from the view's own thread; the
pipeline reads from its worker threads. Readers only ever do single dictionary look-ups,
each atomic in CPython, and a record is never changed once stored (a change replaces it),
so readers need no lock and never wait for the writer.

A deleted object stays readable as a tombstone for `tombstone_window` seconds: the
apiserver sends a batch up to its batch wait (30 s) after the request, and retries a
failed batch for about 100 s more, so an event about a pod can arrive after the pod is
gone. A relist (after the watch's resource version expired) tombstones what disappeared
while the watch was down, for the same reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from healert_webhook.cluster.kinds import WATCHED, split_api_version, watched_kind
from healert_webhook.cluster.meta import Meta, Owner

Key = tuple[str, str]  # (namespace, name); namespace '' for cluster-scoped objects
FetchedKey = tuple[str, str, str, str]  # (group, kind, namespace, name)
MAX_FETCHED = 10_000  # owners of other kinds kept at once (a CRD's objects: Rollouts...)
_EMPTY: dict[str, Meta] = {}


class Store:
    """The objects of one watched resource, live and deleted, and its sync state."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.live: dict[str, dict[str, Meta]] = {}
        self.tombs: dict[Key, Meta] = {}
        self.expiry: deque[tuple[float, Key, Meta]] = deque()
        self.count = 0
        self.listed = False  # a full list has been stored at least once
        self.synced = False  # listed, and the watch is current (not failing)
        self.error: str | None = None  # why it is not synced, when it is not

    def get(self, namespace: str, name: str) -> Meta | None:
        """The live object, else its tombstone, else None."""
        found = self.live.get(namespace, _EMPTY).get(name)
        return found if found is not None else self.tombs.get((namespace, name))

    def keys(self) -> set[Key]:
        """Every live (namespace, name); the writer's thread only."""
        return {(ns, name) for ns, names in self.live.items() for name in names}


@dataclass(frozen=True)
class ResourceStatus:
    """One watched resource, as /readyz and the metrics show it."""

    resource: str
    synced: bool
    listed: bool
    objects: int
    error: str | None


class View:
    """The watched resources' stores and the owners of other kinds fetched once."""

    def __init__(self, tombstone_window: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 label_keys: Iterable[str] = (), annotation_keys: Iterable[str] = ()) -> None:
        self.tombstone_window = tombstone_window
        self.clock = clock
        # The label and annotation keys its records keep (the watches' Extractor's).
        self.label_keys = frozenset(label_keys)
        self.annotation_keys = frozenset(annotation_keys)
        self.stores: dict[str, Store] = {k.resource: Store(k.resource) for k in WATCHED}
        self.fetched: dict[FetchedKey, Meta] = {}

    # -- reading (any thread) -----------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> Meta | None:
        """The object `name` of a watched `resource` (a tombstone if recently deleted)."""
        store = self.stores.get(resource)
        return None if store is None else store.get(namespace or "", name)

    def owner(self, ref: Owner, namespace: str) -> Meta | None:
        """The object an owner reference points at, from the watches or fetched once.

        Owners live in the namespace of what they own (cluster-scoped ones have none).
        """
        kind = watched_kind(ref.api_version, ref.kind)
        if kind is not None:
            return self.get(kind.resource, namespace if kind.namespaced else "", ref.name)
        group = split_api_version(ref.api_version)[0]
        return (self.fetched.get((group, ref.kind, namespace, ref.name))
                or self.fetched.get((group, ref.kind, "", ref.name)))

    def keeps(self, labels: Iterable[str], annotations: Iterable[str] = ()) -> bool:
        """True when its records keep every one of these label and annotation keys."""
        return self.label_keys.issuperset(labels) \
            and self.annotation_keys.issuperset(annotations)

    def listed(self, resource: str) -> bool:
        """True once `resource` has been listed whole (its answers mean something)."""
        store = self.stores.get(resource)
        return store is not None and store.listed

    def synced(self) -> bool:
        """True while every watched resource is listed and its watch current."""
        return all(store.synced for store in self.stores.values())

    def status(self) -> list[ResourceStatus]:
        """Each watched resource's state, in the order of kinds.WATCHED."""
        return [ResourceStatus(s.resource, s.synced, s.listed, s.count, s.error)
                for s in self.stores.values()]

    def tombstones(self) -> int:
        """How many deleted objects are kept."""
        return sum(len(store.tombs) for store in self.stores.values())

    # -- writing (the view's own thread only) -------------------------------------------

    def put(self, resource: str, meta: Meta) -> None:
        """Store an added or changed object."""
        store = self.stores[resource]
        names = store.live.get(meta.namespace)
        if names is None:
            names = store.live[meta.namespace] = {}
        if meta.name not in names:
            store.count += 1
        names[meta.name] = meta

    def delete(self, resource: str, meta: Meta) -> None:
        """Remove an object, keeping its last state as a tombstone."""
        store = self.stores[resource]
        self._bury(store, meta)  # first: a reader in between finds one or the other
        names = store.live.get(meta.namespace)
        if names is not None and names.pop(meta.name, None) is not None:
            store.count -= 1
            if not names:
                del store.live[meta.namespace]

    def _bury(self, store: Store, meta: Meta) -> None:
        now = self.clock()
        tomb = meta.tombstone(now)
        key = (meta.namespace, meta.name)
        store.tombs[key] = tomb
        store.expiry.append((now + self.tombstone_window, key, tomb))

    def relisted(self, resource: str, seen: Iterable[Key]) -> int:
        """After a full list was stored: tombstone what it did not contain; how many."""
        store = self.stores[resource]
        gone = store.keys().difference(seen)
        for namespace, name in gone:
            meta = store.live[namespace][name]
            self.delete(resource, meta)
        store.listed = True
        return len(gone)

    def set_state(self, resource: str, synced: bool, error: str | None = None) -> None:
        """Record whether `resource`'s watch is current, and why not."""
        store = self.stores[resource]
        store.synced = synced and store.listed
        store.error = None if synced else error

    def put_fetched(self, key: FetchedKey, meta: Meta) -> None:
        """Keep an owner of another kind, fetched by GET; the oldest go past the bound."""
        self.fetched.pop(key, None)
        self.fetched[key] = meta
        while len(self.fetched) > MAX_FETCHED:
            del self.fetched[next(iter(self.fetched))]

    def sweep(self) -> int:
        """Forget tombstones older than the window; how many were forgotten."""
        now = self.clock()
        forgotten = 0
        for store in self.stores.values():
            expiry = store.expiry
            while expiry and expiry[0][0] <= now:
                _, key, tomb = expiry.popleft()
                if store.tombs.get(key) is tomb:
                    del store.tombs[key]
                    forgotten += 1
        return forgotten

