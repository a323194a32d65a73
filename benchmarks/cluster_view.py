"""Memory and CPU of the cluster view per cached object (docs/internals.md quotes it).

    .venv/bin/python benchmarks/cluster_view.py              # 100,000 pods
    .venv/bin/python benchmarks/cluster_view.py --pods 20000

Builds a realistic cluster's metadata as the watches receive it (pods as
PartialObjectMetadata JSON lines, their ReplicaSets and Deployments whole), feeds it
through the same code the watches run (orjson, then cluster.watch.record_of, then
View.put), and measures with tracemalloc what the view retains once the input is gone:
per pod, per controller, and for comparison what keeping every label would cost. Then
the CPU time per watch event (decode + record + store) for a pod.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from healert_webhook.cluster.kinds import BY_RESOURCE
from healert_webhook.cluster.meta import Extractor
from healert_webhook.cluster.view import View
from healert_webhook.cluster.watch import record_of

from support import cluster_objects as k8s

ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def suffix(i: int, width: int) -> str:
    """A generated-name suffix for the i-th object."""
    out = []
    for _ in range(width):
        i, r = divmod(i, len(ALPHABET))
        out.append(ALPHABET[r])
    return "".join(out)


def workload_template(team: int, app: int) -> dict[str, str]:
    """The pod template labels a Helm-deployed service carries (one in three with Backstage)."""
    labels = {"app.kubernetes.io/name": f"svc-{app}", "app.kubernetes.io/instance": f"rel-{app}",
              "app.kubernetes.io/version": "1.4.2", "app.kubernetes.io/managed-by": "Helm",
              "helm.sh/chart": f"svc-{app}-0.3.1", "team": f"team-{team}"}
    if app % 3 == 0:
        labels["backstage.io/kubernetes-id"] = f"service-{app}"
    return labels


def cluster(pods: int, per_workload: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(controllers as whole objects, pods as watch event lines)."""
    controllers: list[dict[str, Any]] = []
    lines: list[bytes] = []
    workloads = max(1, pods // per_workload)
    for w in range(workloads):
        ns = f"team-{w % 50}"
        dep = k8s.deployment(ns, f"svc-{w}-api", template=workload_template(w % 50, w),
                             annotations={"argocd.argoproj.io/tracking-id":
                                          f"apps-{w % 50}:apps/Deployment:{ns}/svc-{w}-api"})
        controllers.append(dep)
        for revision in range(3):  # current and old ReplicaSets (revisionHistoryLimit)
            rs = k8s.replicaset(dep, suffix(w * 7 + revision, 10))
            controllers.append(rs)
        for p in range(per_workload):
            item = k8s.pod(rs, suffix(w * per_workload + p, 5))
            lines.append(orjson.dumps({"type": "ADDED", "object": item}))
    return controllers, lines


def retained(fill: Any) -> int:
    """Bytes tracemalloc sees retained after `fill()` ran and its garbage was collected."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep = fill()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del keep
    return total


def load(lines: list[bytes], label_keys: tuple[str, ...]) -> View:
    """A view with every pod of `lines` stored as its watch would store it."""
    view = View(600.0)
    extractor = Extractor(label_keys, ("argocd.argoproj.io/tracking-id",))
    kind = BY_RESOURCE["pods"]
    for line in lines:
        meta = record_of(kind, extractor, orjson.loads(line)["object"])
        assert meta is not None
        view.put("pods", meta)
    return view


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--per-workload", type=int, default=20)
    args = parser.parse_args()
    controllers, lines = cluster(args.pods, args.per_workload)
    n = len(lines)
    sample = orjson.loads(lines[0])["object"]["metadata"]
    print(f"{n} pods of {len(controllers) // 4} Deployments (3 ReplicaSets each); "
          f"a pod's metadata is {len(orjson.dumps(sample))} bytes of JSON, "
          f"{len(sample.get('labels', {}))} labels, "
          f"{len(sample.get('managedFields', []))} managedFields entries")
    kept = retained(lambda: load(lines, k8s.KEPT_LABELS))
    all_keys = (*workload_template(0, 0), "pod-template-hash")
    every = retained(lambda: load(lines, all_keys))
    print(f"pods, kept labels only: {kept / n:7.0f} B per pod, "
          f"{kept / 2**20:6.1f} MiB for {n}")
    print(f"pods, every label kept: {every / n:7.0f} B per pod, "
          f"{every / 2**20:6.1f} MiB for {n}")

    def load_controllers() -> View:
        view = View(600.0)
        extractor = Extractor(k8s.KEPT_LABELS, ("argocd.argoproj.io/tracking-id",))
        for obj in controllers:
            resource = "deployments" if obj["kind"] == "Deployment" else "replicasets"
            meta = record_of(BY_RESOURCE[resource], extractor, obj)
            assert meta is not None
            view.put(resource, meta)
        return view

    ctl = retained(load_controllers)
    print(f"controllers: {ctl / len(controllers):7.0f} B per Deployment or ReplicaSet")
    # CPU per pod watch event: decode the line, build the record, store it.
    view = View(600.0)
    extractor = Extractor(k8s.KEPT_LABELS, ())
    kind = BY_RESOURCE["pods"]
    started = time.process_time()
    for line in lines:
        meta = record_of(kind, extractor, orjson.loads(line)["object"])
        assert meta is not None
        view.put("pods", meta)
    spent = time.process_time() - started
    print(f"cpu: {spent / n * 1e6:.1f} us per pod event (decode + record + store), "
          f"{n / spent:,.0f} events/s on one core")


if __name__ == "__main__":
    main()
