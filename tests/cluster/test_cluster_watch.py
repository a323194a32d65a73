"""The reflector's protocol: pages, watch events, bookmarks, 410 relists, failures, backoff.

The apiserver's answers here are scripted (httpx2.MockTransport): a 410 ERROR event in
the middle of a watch, an expired continue token or an instant end of a watch cannot be
had on demand from a real apiserver inside a unit test. conformance/tests/
test_50_cluster_view.py runs the same code against the real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
from prometheus_client import REGISTRY

from healert_webhook.cluster.kinds import BY_RESOURCE
from healert_webhook.cluster.meta import Extractor, Scaler
from healert_webhook.cluster.view import View
from healert_webhook.cluster.watch import JSON, PARTIAL, PARTIAL_LIST, Reflector, Timing, Wake

from support import cluster_objects as k8s

FAST = Timing(page_size=2, watch_seconds=60, backoff_base=0.01, backoff_max=0.05)
Handler = Callable[[httpx2.Request, int], Awaitable[httpx2.Response]]


def sample(name: str, **labels: str) -> float:
    """A metric's current value (0 before its first sample)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def page(items: list[dict[str, Any]], version: str, token: str | None = None) -> httpx2.Response:
    """A list answer."""
    meta: dict[str, Any] = {"resourceVersion": version}
    if token:
        meta["continue"] = token
    return httpx2.Response(200, json={"kind": "PartialObjectMetadataList",
                                      "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                                      "items": items})


def stream(*events: dict[str, Any], hang: asyncio.Event | None = None) -> httpx2.Response:
    """A watch answer: the events as JSON lines, then the end (or a wait for `hang`)."""

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield json.dumps(event).encode() + b"\n"
        if hang is not None:
            await hang.wait()

    return httpx2.Response(200, content=body())


def event(kind: str, obj: dict[str, Any], version: str) -> dict[str, Any]:
    """A watch event whose object is at `version`."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = version
    return {"type": kind, "object": obj}


def bookmark(version: str) -> dict[str, Any]:
    """A BOOKMARK event: only the resource version."""
    return {"type": "BOOKMARK", "object": {"kind": "PartialObjectMetadata",
                                           "apiVersion": "meta.k8s.io/v1",
                                           "metadata": {"resourceVersion": version}}}


def gone() -> dict[str, Any]:
    """The ERROR event the apiserver sends when the watch's version was compacted."""
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                                        "status": "Failure", "reason": "Expired", "code": 410,
                                        "message": "too old resource version: 10 (25)"}}


class Script:
    """Answers the reflector's requests in order; records them; stops at the last."""

    def __init__(self, *answers: Callable[[httpx2.Request], httpx2.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []
        self.hang = asyncio.Event()
        self.done = asyncio.Event()

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if len(self.requests) >= len(self.answers):
            self.done.set()
        if len(self.requests) > len(self.answers):
            return stream(hang=self.hang)
        return self.answers[len(self.requests) - 1](request)


def run(resource: str, script: Script, view: View | None = None,
        timing: Timing = FAST) -> tuple[View, Script]:
    """Run a reflector until the script is used up (bounded), then stop it."""
    view = view or View(600.0)
    extractor = Extractor(k8s.KEPT_LABELS, ())

    async def main() -> None:
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(script),
                                    base_url="https://apiserver.test")
        reflector = Reflector(client, BY_RESOURCE[resource], view, extractor, timing=timing,
                              rng=random.Random(7))
        task = asyncio.create_task(reflector.run())
        try:
            await asyncio.wait_for(script.done.wait(), 20)
            for _ in range(50):  # let the last answer be applied
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    asyncio.run(main())
    return view, script


def pods(*names: str) -> list[dict[str, Any]]:
    return [k8s.bare_pod("shop", n) for n in names]


def test_pages_then_a_watch_with_bookmarks_keep_the_view_current() -> None:
    a, b, c, d = pods("a", "b", "c", "d")
    relabelled = k8s.bare_pod("shop", "a", labels={"backstage.io/kubernetes-id": "shop-web"})
    script = Script(
        lambda r: page([a, b], "10", token="t1"),
        lambda r: page([c], "10"),
        lambda r: stream(event("ADDED", d, "11"), event("MODIFIED", relabelled, "12"),
                         event("DELETED", b, "13"), bookmark("20")),
        lambda r: stream(bookmark("21")),
    )
    view, script = run("pods", script)
    first, second, watch, rewatch = script.requests[:4]
    assert first.headers["accept"] == PARTIAL_LIST
    assert first.url.params["limit"] == "2" and "continue" not in first.url.params
    assert second.url.params["continue"] == "t1"
    assert watch.headers["accept"] == PARTIAL
    assert watch.url.params["resourceVersion"] == "10"
    assert watch.url.params["allowWatchBookmarks"] == "true"
    assert 60 <= int(watch.url.params["timeoutSeconds"]) < 120
    # The bookmark moved the version: the next watch resumes there, no relist.
    assert rewatch.url.params["resourceVersion"] == "20"
    assert [r.url.params.get("watch") for r in script.requests[:5]] == \
        [None, None, "1", "1", "1"]
    assert script.requests[4].url.params["resourceVersion"] == "21"
    assert view.get("pods", "shop", "d") is not None
    found = view.get("pods", "shop", "a")
    assert found is not None and found.label("backstage.io/kubernetes-id") == "shop-web"
    tomb = view.get("pods", "shop", "b")
    assert tomb is not None and tomb.deleted_at is not None
    assert view.stores["pods"].count == 3 and view.synced() is False  # others never listed
    assert view.stores["pods"].synced


def test_a_410_relists_and_tombstones_what_vanished_meanwhile() -> None:
    a, b, c = pods("a", "b", "c")
    expired = sample("healert_cluster_view_lists_total", resource="pods", reason="expired")
    script = Script(
        lambda r: page([a, b], "10"),
        lambda r: stream(gone()),
        lambda r: page([a, c], "30"),
        lambda r: httpx2.Response(410, json={"kind": "Status", "code": 410}),
        lambda r: page([a, c], "40"),
    )
    view, script = run("pods", script)
    assert script.requests[2].url.params.get("watch") is None, "a relist, not a re-watch"
    assert script.requests[3].url.params["resourceVersion"] == "30"
    assert script.requests[5].url.params["resourceVersion"] == "40"
    tomb = view.get("pods", "shop", "b")
    assert tomb is not None and tomb.deleted_at is not None
    assert view.get("pods", "shop", "c") is not None
    assert sample("healert_cluster_view_lists_total", resource="pods",
                  reason="expired") == expired + 2


def test_an_expired_continue_token_starts_the_list_over() -> None:
    a, b, c = pods("a", "b", "c")
    script = Script(
        lambda r: page([a, b], "10", token="t1"),
        lambda r: httpx2.Response(410, json={"kind": "Status", "code": 410,
                                             "reason": "Expired"}),
        lambda r: page([c], "50"),
    )
    view, script = run("pods", script)
    assert "continue" not in script.requests[2].url.params
    assert script.requests[3].url.params["resourceVersion"] == "50"
    # Only the completed list counts: a and b were not in it.
    a_now = view.get("pods", "shop", "a")
    assert a_now is not None and a_now.deleted_at is not None
    assert view.stores["pods"].count == 1


def test_a_refused_list_is_not_synced_and_is_retried_after_a_backoff() -> None:
    before = sample("healert_cluster_view_errors_total", resource="jobs", reason="forbidden")
    states: list[tuple[bool, str | None]] = []
    view = View(600.0)

    def refused(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403, json={"kind": "Status", "reason": "Forbidden", "code": 403,
                                          "message": "jobs.batch is forbidden: ..."})

    def record_then_list(_: httpx2.Request) -> httpx2.Response:
        store = view.stores["jobs"]
        states.append((store.synced, store.error))
        return page([k8s.job("shop", "db-migrate-q2w8z", generate_name="db-migrate-")], "5")

    script = Script(refused, refused, record_then_list, lambda r: stream(bookmark("6")))
    run("jobs", script, view)
    assert states == [(False, "apiserver answered 403 Forbidden")]
    assert sample("healert_cluster_view_errors_total", resource="jobs",
                  reason="forbidden") == before + 2
    assert view.stores["jobs"].synced and view.stores["jobs"].error is None
    assert script.requests[2].headers["accept"] == "application/json", "jobs are read whole"


def test_a_watch_that_ends_at_once_with_nothing_backs_off_instead_of_spinning() -> None:
    before = sample("healert_cluster_view_errors_total", resource="pods", reason="empty_watch")
    script = Script(lambda r: page([], "1"), lambda r: stream(), lambda r: stream())
    run("pods", script)
    assert sample("healert_cluster_view_errors_total", resource="pods",
                  reason="empty_watch") == before + 2


def test_a_line_that_is_not_json_is_a_failure_and_the_watch_resumes() -> None:
    a, b = pods("a", "b")
    script = Script(
        lambda r: page([a], "10"),
        lambda r: httpx2.Response(200, content=b'{"type":"ADDED","object":' +
                                  json.dumps(event("ADDED", b, "11")["object"]).encode() +
                                  b"}\n{not json\n"),
        lambda r: stream(bookmark("12")),
    )
    view, script = run("pods", script)
    assert script.requests[2].url.params["resourceVersion"] == "11"
    assert view.get("pods", "shop", "b") is not None


def test_controllers_keep_their_pod_templates_labels_through_the_watch() -> None:
    dep = k8s.deployment("shop", "orders-api", template={
        "backstage.io/kubernetes-id": "orders-service"})
    script = Script(lambda r: page([dep], "3"), lambda r: stream(bookmark("4")))
    view, script = run("deployments", script)
    found = view.get("deployments", "shop", "orders-api")
    assert found is not None
    assert found.template_label("backstage.io/kubernetes-id") == "orders-service"
    assert str(script.requests[0].url).startswith("https://apiserver.test/apis/apps/v1/deployments")


def test_autoscalers_keep_their_scale_target_through_the_watch() -> None:
    """HPAs are read whole (their target is in the spec); a change of target replaces the
    record, a deletion keeps the target in the tombstone."""
    web = k8s.hpa("shop", "web", "orders-api")
    cart = k8s.hpa("shop", "cart", "cart")
    retargeted = k8s.hpa("shop", "web", "orders-worker")
    script = Script(lambda r: page([web, cart], "3"),
                    lambda r: stream(event("MODIFIED", retargeted, "4"),
                                     event("DELETED", cart, "5"), bookmark("6")))
    view, script = run("horizontalpodautoscalers", script)
    listing, watch = script.requests[:2]
    assert str(listing.url).startswith(
        "https://apiserver.test/apis/autoscaling/v2/horizontalpodautoscalers")
    assert listing.headers["accept"] == watch.headers["accept"] == JSON
    found = view.get("horizontalpodautoscalers", "shop", "web")
    assert isinstance(found, Scaler) and found.target.name == "orders-worker"
    tomb = view.get("horizontalpodautoscalers", "shop", "cart")
    assert isinstance(tomb, Scaler) and tomb.deleted_at is not None
    assert (tomb.target.kind, tomb.target.name) == ("Deployment", "cart")
    assert view.stores["horizontalpodautoscalers"].synced


def test_the_first_reflector_to_list_again_ends_the_others_backoff() -> None:
    """The apiserver is back: a resource waiting out a long backoff lists at once."""
    view = View(600.0)
    extractor = Extractor(k8s.KEPT_LABELS, ())

    def refused(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, json={"kind": "Status", "reason": "ServiceUnavailable"})

    pods_script = Script(refused, lambda r: page(pods("a"), "5"),
                         lambda r: stream(bookmark("6")))
    jobs_script = Script(refused, lambda r: page([], "5"), lambda r: stream(bookmark("6")))

    async def main() -> None:
        wake = Wake()
        clients, tasks = [], []
        for resource, script, timing in (
                ("jobs", jobs_script, Timing(backoff_base=600.0, backoff_max=600.0)),
                ("pods", pods_script, Timing(backoff_base=0.05, backoff_max=0.05))):
            client = httpx2.AsyncClient(transport=httpx2.MockTransport(script),
                                        base_url="https://apiserver.test")
            clients.append(client)
            reflector = Reflector(client, BY_RESOURCE[resource], view, extractor,
                                  timing=timing, rng=random.Random(3), wake=wake)
            tasks.append(asyncio.create_task(reflector.run()))
            await asyncio.sleep(0.2)  # jobs has failed and sleeps before pods starts
        try:
            await asyncio.wait_for(jobs_script.done.wait(), 20)  # not 300 s and more
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.aclose()

    asyncio.run(main())
    assert view.listed("jobs") and view.listed("pods")


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    assert Timing().backoff_max == 10.0  # every second unsynced is a name-rules answer
    timing = Timing(backoff_base=0.8, backoff_max=30.0)
    reflector = Reflector(httpx2.AsyncClient(), BY_RESOURCE["pods"], View(1.0),
                          Extractor((), ()), timing=timing, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(30.0, 0.8 * 2 ** attempt)
        delays = {reflector.backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jittered"
    assert max(reflector.backoff(1000) for _ in range(50)) <= 30.0


def test_a_version_expired_right_after_a_list_backs_off_before_listing_again() -> None:
    started: list[float] = []

    def listing(_: httpx2.Request) -> httpx2.Response:
        started.append(asyncio.get_event_loop().time())
        return page([], "7")

    slow = Timing(page_size=2, watch_seconds=60, backoff_base=0.2, backoff_max=0.4)
    script = Script(listing, lambda r: stream(gone()), listing, lambda r: stream(gone()),
                    listing)
    run("namespaces", script, timing=slow)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(gaps) == 2 and all(gap >= 0.1 for gap in gaps), gaps
