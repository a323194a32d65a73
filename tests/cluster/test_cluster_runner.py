"""The view's own thread: it starts at once, never blocks on an absent apiserver, stops."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from healert_webhook.cluster.connect import find
from healert_webhook.cluster.runner import ClusterView, describe, publish
from healert_webhook.cluster.watch import Timing
from healert_webhook.entity import LABEL_KEYS

from support import cluster_objects as k8s
from support.cluster_objects import Loaded


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_apiserver_is_reported_and_stop_is_prompt(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    connection = find("auto", (config,), environ={})
    assert connection is not None
    before = REGISTRY.get_sample_value("healert_cluster_view_errors_total",
                                       {"resource": "pods", "reason": "transport"}) or 0.0
    view = ClusterView(connection, 600.0, LABEL_KEYS,
                       timing=Timing(backoff_base=0.05, backoff_max=0.2))
    started = time.monotonic()
    view.start()
    assert time.monotonic() - started < 10, "start does not wait for the cluster"
    try:
        deadline = time.monotonic() + 30
        while (REGISTRY.get_sample_value("healert_cluster_view_errors_total",
                                         {"resource": "pods", "reason": "transport"})
               or 0.0) < before + 2:
            assert time.monotonic() < deadline, "no connection error counted"
            time.sleep(0.05)
        text = view.describe()
        assert text.startswith("cluster view: not synced: pods (ConnectError")
        assert "127.0.0.1" not in text and "token" not in text
    finally:
        view.stop(timeout=10)
    assert not any(t.name == "cluster-view" and t.is_alive() for t in threading.enumerate())


def test_the_gauges_and_the_readyz_line_follow_the_view() -> None:
    box = Loaded()
    box.add_partial("pods", k8s.bare_pod("shop", "a"), k8s.bare_pod("shop", "b"))
    [meta] = box.add_partial("pods", k8s.bare_pod("shop", "c"))
    box.view.delete("pods", meta)
    publish(box.view)
    assert REGISTRY.get_sample_value("healert_cluster_view_objects", {"resource": "pods"}) == 2
    assert REGISTRY.get_sample_value("healert_cluster_view_synced", {"resource": "pods"}) == 1
    assert REGISTRY.get_sample_value("healert_cluster_view_tombstones") == 1
    assert describe(box.view) == "cluster view: synced (2 objects)"
    box.view.set_state("jobs", False, "apiserver answered 403 Forbidden")
    publish(box.view)
    assert REGISTRY.get_sample_value("healert_cluster_view_synced", {"resource": "jobs"}) == 0
    assert describe(box.view) == \
        "cluster view: not synced: jobs (apiserver answered 403 Forbidden)"
