"""Owners of kinds the view does not watch: discovery, one GET, failures remembered.

The apiserver's discovery and GET answers are scripted (httpx2.MockTransport) so that 403,
404 and an unknown kind can each be had on demand; the conformance suite runs the view
against the real apiserver.
"""

from __future__ import annotations

import asyncio

import httpx2
from prometheus_client import REGISTRY

from healert_webhook.cluster.kinds import BY_GROUP_KIND, split_api_version
from healert_webhook.cluster.meta import Extractor
from healert_webhook.cluster.owners import OwnerFetcher
from healert_webhook.cluster.view import View
from healert_webhook.cluster.watch import record_of

from support import cluster_objects as k8s

DISCOVERY = {"kind": "APIResourceList", "groupVersion": "argoproj.io/v1alpha1", "resources": [
    {"name": "rollouts", "singularName": "rollout", "namespaced": True, "kind": "Rollout",
     "verbs": ["get", "list", "watch"]},
    {"name": "rollouts/status", "namespaced": True, "kind": "Rollout", "verbs": ["get"]},
]}


def sample(result: str) -> float:
    return REGISTRY.get_sample_value("healert_cluster_view_owner_fetches_total",
                                     {"result": result}) or 0.0


def fetch_all(answers: dict[str, httpx2.Response], *pods: dict) -> tuple[View, list[str]]:
    """Queue the owners of `pods`' ReplicaSets (or HPAs' targets) and let the fetcher
    work (bounded)."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(f"{request.url.path} {request.headers['accept']}")
        return answers.get(request.url.path, httpx2.Response(404, json={"kind": "Status"}))

    view = View(600.0)
    extractor = Extractor(k8s.KEPT_LABELS, ())

    async def main() -> None:
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler),
                                    base_url="https://apiserver.test")
        fetcher = OwnerFetcher(client, view, extractor)
        for rs in pods:
            meta = record_of(BY_GROUP_KIND[(split_api_version(rs["apiVersion"])[0],
                                            rs["kind"])], extractor, rs)
            assert meta is not None
            fetcher.want(meta)
            fetcher.want(meta)  # asked twice: fetched once
        task = asyncio.create_task(fetcher.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if fetcher.queue.empty() and not fetcher.pending:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()

    asyncio.run(main())
    return view, seen


def test_an_owner_of_another_kind_is_fetched_once_through_discovery() -> None:
    rollout = k8s.rollout("shop", "checkout", labels={"backstage.io/kubernetes-id": "co"})
    rs = k8s.replicaset(rollout, "6c8d9f7b5", kind="Rollout",
                        api_version="argoproj.io/v1alpha1")
    before = sample("fetched")
    view, seen = fetch_all({
        "/apis/argoproj.io/v1alpha1": httpx2.Response(200, json=DISCOVERY),
        "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout":
            httpx2.Response(200, json=rollout),
    }, rs)
    assert seen[0] == "/apis/argoproj.io/v1alpha1 application/json"
    assert seen[1].startswith("/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout "
                              "application/json;as=PartialObjectMetadata")
    assert len(seen) == 2
    found = view.fetched[("argoproj.io", "Rollout", "shop", "checkout")]
    assert found.label("backstage.io/kubernetes-id") == "co"
    assert sample("fetched") == before + 1


def test_an_autoscalers_target_of_another_kind_is_fetched_as_an_owner_is() -> None:
    rollout = k8s.rollout("shop", "checkout", labels={"backstage.io/kubernetes-id": "co"})
    hpa = k8s.hpa("shop", "checkout", "checkout", target_kind="Rollout",
                  target_api="argoproj.io/v1alpha1")
    view, seen = fetch_all({
        "/apis/argoproj.io/v1alpha1": httpx2.Response(200, json=DISCOVERY),
        "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout":
            httpx2.Response(200, json=rollout),
    }, hpa)
    assert len(seen) == 2
    found = view.fetched[("argoproj.io", "Rollout", "shop", "checkout")]
    assert found.label("backstage.io/kubernetes-id") == "co"


def test_an_autoscalers_watched_target_is_never_fetched() -> None:
    view, seen = fetch_all({}, k8s.hpa("shop", "web", "orders-api"))
    assert seen == [] and not view.fetched


def test_watched_kinds_are_never_fetched() -> None:
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    view, seen = fetch_all({}, rs)
    assert seen == [] and not view.fetched


def test_forbidden_missing_and_unknown_owners_are_counted_not_fatal() -> None:
    forbidden = k8s.replicaset(k8s.rollout("shop", "a"), "6c8d9f7b5", kind="Rollout",
                               api_version="argoproj.io/v1alpha1")
    missing = k8s.replicaset(k8s.rollout("shop", "b"), "6c8d9f7b6", kind="Rollout",
                             api_version="argoproj.io/v1alpha1")
    unknown = k8s.replicaset(k8s.rollout("shop", "c"), "6c8d9f7b7", kind="Widget",
                             api_version="argoproj.io/v1alpha1")
    counts = {r: sample(r) for r in ("forbidden", "not_found", "unknown_kind")}
    view, _ = fetch_all({
        "/apis/argoproj.io/v1alpha1": httpx2.Response(200, json=DISCOVERY),
        "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/a":
            httpx2.Response(403, json={"kind": "Status", "reason": "Forbidden"}),
    }, forbidden, missing, unknown)
    assert not view.fetched
    for result, before in counts.items():
        assert sample(result) == before + 1, result
