"""The view's map: look-ups, tombstones and their window, relists, sync state."""

from __future__ import annotations

import threading

from healert_webhook.cluster.meta import Meta, Owner
from healert_webhook.cluster.view import MAX_FETCHED, Store, View

from support import cluster_objects as k8s
from support.cluster_objects import Loaded


def _pod(name: str, ns: str = "shop") -> dict:
    return k8s.bare_pod(ns, name)


def test_objects_are_found_by_resource_namespace_and_name() -> None:
    box = Loaded()
    box.add_partial("pods", _pod("a"), _pod("a", ns="other"))
    assert box.view.get("pods", "shop", "a") is not None
    assert box.view.get("pods", "other", "a") is not None
    assert box.view.get("pods", "shop", "b") is None
    assert box.view.get("secrets", "shop", "a") is None
    assert box.view.stores["pods"].count == 2
    box.add_partial("pods", _pod("a"))  # a change replaces, it does not add
    assert box.view.stores["pods"].count == 2


def test_a_deleted_object_stays_readable_for_the_window_then_goes() -> None:
    box = Loaded(window=130.0)
    [meta] = box.add_partial("pods", _pod("gone"))
    box.view.delete("pods", meta)
    tomb = box.view.get("pods", "shop", "gone")
    assert tomb is not None and tomb.deleted_at == box.clock.now
    assert box.view.stores["pods"].count == 0 and box.view.tombstones() == 1
    box.clock.now += 129
    assert box.view.sweep() == 0
    assert box.view.get("pods", "shop", "gone") is not None
    box.clock.now += 2
    assert box.view.sweep() == 1
    assert box.view.get("pods", "shop", "gone") is None
    assert box.view.tombstones() == 0


def test_a_recreated_object_wins_over_its_tombstone() -> None:
    box = Loaded(window=100.0)
    [old] = box.add_partial("pods", _pod("web-0"))
    box.view.delete("pods", old)
    box.clock.now += 50
    [new] = box.add_partial("pods", _pod("web-0"))
    assert box.view.get("pods", "shop", "web-0") is new
    box.view.delete("pods", new)  # deleted again: a newer tombstone
    box.clock.now += 60  # the first tombstone's window is over, not the second's
    box.view.sweep()
    found = box.view.get("pods", "shop", "web-0")
    assert found is not None and found.deleted_at == 1050.0


def test_a_relist_tombstones_what_disappeared_meanwhile() -> None:
    box = Loaded()
    box.add_partial("pods", _pod("stays"), _pod("goes"))
    assert box.view.relisted("pods", {("shop", "stays")}) == 1
    goes = box.view.get("pods", "shop", "goes")
    assert goes is not None and goes.deleted_at is not None
    stays = box.view.get("pods", "shop", "stays")
    assert stays is not None and stays.deleted_at is None
    assert box.view.stores["pods"].count == 1


def test_synced_only_after_a_full_list_and_while_the_watch_is_current() -> None:
    box = Loaded()
    store = box.view.stores["jobs"]
    store.listed = store.synced = False
    box.view.set_state("jobs", True)
    assert not box.view.synced(), "a watch before any list is not synced"
    box.view.relisted("jobs", set())
    box.view.set_state("jobs", True)
    assert box.view.synced()
    box.view.set_state("jobs", False, "ConnectError talking to the apiserver")
    assert not box.view.synced()
    state = next(s for s in box.view.status() if s.resource == "jobs")
    assert (state.listed, state.synced, state.error) == \
        (True, False, "ConnectError talking to the apiserver")


def test_owners_are_found_through_their_kind() -> None:
    box = Loaded()
    dep = k8s.deployment("shop", "orders-api")
    box.add(dep)
    ref = Owner("apps/v1", "Deployment", "orders-api", "u", True)
    assert box.view.owner(ref, "shop") is not None
    assert box.view.owner(ref, "other") is None
    box.fetched(k8s.rollout("shop", "checkout"))
    rollout = Owner("argoproj.io/v1alpha1", "Rollout", "checkout", "u", True)
    found = box.view.owner(rollout, "shop")
    assert found is not None and found.kind == "Rollout"
    # same kind name, another group: not the same thing
    assert box.view.owner(Owner("example.com/v1", "Rollout", "checkout", "u", True),
                          "shop") is None


def test_fetched_owners_are_bounded() -> None:
    box = Loaded()
    meta = box.extractor.record("Rollout", {"name": "r", "namespace": "shop"})
    assert meta is not None
    for i in range(MAX_FETCHED + 10):
        box.view.put_fetched(("argoproj.io", "Rollout", "shop", f"r{i}"), meta)
    assert len(box.view.fetched) == MAX_FETCHED
    assert ("argoproj.io", "Rollout", "shop", "r0") not in box.view.fetched


def test_readers_on_other_threads_never_fail_while_the_writer_churns() -> None:
    box = Loaded(window=0.0)
    names = [f"p{i}" for i in range(200)]
    metas = box.add_partial("pods", *(_pod(n, ns=f"ns{i % 7}") for i, n in enumerate(names)))
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                for i, name in enumerate(names):
                    box.view.get("pods", f"ns{i % 7}", name)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(50):
            for meta in metas:
                box.view.delete("pods", meta)
            box.view.sweep()
            box.add_partial("pods", *(_pod(n, ns=f"ns{i % 7}") for i, n in enumerate(names)))
    finally:
        done.set()
        for thread in readers:
            thread.join(30)
    assert not errors


def test_a_deleted_object_never_vanishes_from_the_view_for_a_reader() -> None:
    """Readers run on other threads with no lock (view.py): between any two steps of the
    writer's delete, a reader must find the object live or as its tombstone. Missing
    both, resolution answers `unknown` and the event is charged by the name rules
    instead of the object's label. The reader here looks at the one point inside
    `delete` where the writer hands over to `_bury`."""
    seen: list[Meta | None] = []

    class Watched(View):
        def _bury(self, store: Store, meta: Meta) -> None:
            seen.append(self.get("pods", meta.namespace, meta.name))  # a reader, meanwhile
            super()._bury(store, meta)

    view = Watched(600.0)
    pod = Meta("Pod", "shop", "orders-7d9f8b6c4-xkj2p", "u1", "orders-7d9f8b6c4-",
               labels=(("backstage.io/kubernetes-id", "orders"),), annotations=(),
               owners=(), managers=())
    view.put("pods", pod)
    view.delete("pods", pod)
    assert seen and seen[0] is not None
    assert view.get("pods", "shop", pod.name) is not None  # its tombstone, afterwards
