"""Objects shaped as a v1.3x apiserver serves them, for the cluster view's tests.

Written from the Kubernetes API reference (ObjectMeta, OwnerReference, ManagedFieldsEntry,
PartialObjectMetadata) and the controllers' behaviour: a Deployment's ReplicaSet is
`<deployment>-<pod-template-hash>` and carries the template's labels plus
`pod-template-hash`; its pods are `<replicaset>-<5 chars>` made from `generateName`;
a CronJob's Job is `<cronjob>-<scheduled minutes>`; a Job's pods are
`<job>-<5 chars>`. Pods and Namespaces come as PartialObjectMetadata (what the view
asks for), controllers whole (the view reads their pod template's labels).
"""

from __future__ import annotations

import hashlib
from typing import Any

from healert_webhook.cluster.kinds import BY_GROUP_KIND, BY_RESOURCE, split_api_version
from healert_webhook.cluster.meta import Extractor, Meta
from healert_webhook.cluster.view import View
from healert_webhook.cluster.watch import record_of
from healert_webhook.entity import LABEL_KEYS
from healert_webhook.rules import DEFAULT_GITOPS

Obj = dict[str, Any]
TIME = "2026-11-26T10:00:00Z"


def uid(*parts: str) -> str:
    """A stable UUID-shaped uid for an object."""
    h = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def managed(*managers: str, api_version: str = "apps/v1") -> list[Obj]:
    """managedFields entries, one per manager, as server-side apply and updates write them."""
    entries = []
    for manager in managers:
        apply = manager in ("argocd-controller", "kustomize-controller", "helm-controller")
        entries.append({
            "manager": manager, "operation": "Apply" if apply else "Update",
            "apiVersion": api_version, "time": TIME, "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                         "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}},
        })
    return entries


def owner(kind: str, name: str, namespace: str, api_version: str = "apps/v1",
          controller: bool = True) -> Obj:
    """An ownerReference as a controller sets it."""
    return {"apiVersion": api_version, "kind": kind, "name": name,
            "uid": uid(kind, namespace, name), "controller": controller,
            "blockOwnerDeletion": True}


def _meta(kind: str, namespace: str, name: str, **extra: Any) -> Obj:
    meta: Obj = {"name": name, "uid": uid(kind, namespace, name),
                 "resourceVersion": "1000", "creationTimestamp": TIME}
    if namespace:
        meta["namespace"] = namespace
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def partial(meta: Obj) -> Obj:
    """A PartialObjectMetadata item (what a metadata-only list or watch returns)."""
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}


def _pod_spec() -> Obj:
    return {"containers": [{"name": "app", "image": "registry.example/app:1.4.2",
                            "ports": [{"containerPort": 8080}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}


def deployment(namespace: str, name: str, labels: Obj | None = None,
               template: Obj | None = None, annotations: Obj | None = None,
               managers: tuple[str, ...] = ("kubectl-client-side-apply",
                                            "kube-controller-manager")) -> Obj:
    """A Deployment; `template` are its pod template's labels."""
    template = dict(template or {"app": name})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta("Deployment", namespace, name, labels=labels, generation=3,
                          annotations={"deployment.kubernetes.io/revision": "3",
                                       **(annotations or {})},
                          managedFields=managed(*managers)),
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": template.get("app", name)}},
                 "template": {"metadata": {"labels": template}, "spec": _pod_spec()},
                 "strategy": {"type": "RollingUpdate"}, "revisionHistoryLimit": 10},
        "status": {"replicas": 3, "readyReplicas": 3, "observedGeneration": 3},
    }


def replicaset(parent: Obj, pod_hash: str, kind: str = "Deployment",
               api_version: str = "apps/v1") -> Obj:
    """The ReplicaSet a Deployment (or an Argo Rollout) made for its current template."""
    meta = parent["metadata"]
    ns, name = meta["namespace"], meta["name"]
    template = dict(parent["spec"]["template"]["metadata"]["labels"])
    template["pod-template-hash"] = pod_hash
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": _meta("ReplicaSet", ns, f"{name}-{pod_hash}", labels=template,
                          ownerReferences=[owner(kind, name, ns, api_version)],
                          managedFields=managed("kube-controller-manager"),
                          annotations={"deployment.kubernetes.io/revision": "3"}),
        "spec": {"replicas": 3, "selector": {"matchLabels": {"pod-template-hash": pod_hash}},
                 "template": {"metadata": {"labels": template}, "spec": _pod_spec()}},
        "status": {"replicas": 3},
    }


def pod(parent: Obj, suffix: str = "x7k2p", kind: str | None = None) -> Obj:
    """A pod its controller made from generateName, as PartialObjectMetadata."""
    meta = parent["metadata"]
    ns, name = meta["namespace"], meta["name"]
    kind = kind or parent["kind"]
    labels = dict(parent["spec"]["template"]["metadata"]["labels"])
    api = "batch/v1" if kind == "Job" else "apps/v1"
    return partial(_meta("Pod", ns, f"{name}-{suffix}", generateName=f"{name}-",
                         labels=labels, ownerReferences=[owner(kind, name, ns, api)],
                         managedFields=managed("kube-controller-manager", "kubelet",
                                               api_version="v1")))


def bare_pod(namespace: str, name: str, labels: Obj | None = None,
             owners: list[Obj] | None = None) -> Obj:
    """A pod nobody controls (kubectl run, kubectl debug node, a static pod's mirror)."""
    return partial(_meta("Pod", namespace, name, labels=labels, ownerReferences=owners,
                         managedFields=managed("kubectl-run", api_version="v1")))


def statefulset(namespace: str, name: str, labels: Obj | None = None,
                template: Obj | None = None) -> Obj:
    """A StatefulSet; its pods are `<name>-<ordinal>` (pod() with suffix '0')."""
    obj = deployment(namespace, name, labels, template)
    obj["kind"] = "StatefulSet"
    obj["metadata"]["uid"] = uid("StatefulSet", namespace, name)
    obj["metadata"].pop("annotations")
    obj["spec"]["serviceName"] = name
    return obj


def job(namespace: str, name: str, generate_name: str | None = None,
        cronjob: str | None = None, template: Obj | None = None) -> Obj:
    """A Job, made from generateName or by a CronJob."""
    extra: Obj = {"generateName": generate_name}
    if cronjob:
        extra["ownerReferences"] = [owner("CronJob", cronjob, namespace, "batch/v1")]
    labels = {"batch.kubernetes.io/job-name": name, **(template or {})}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta("Job", namespace, name, labels=dict(template or {}) or None,
                          managedFields=managed("kube-controller-manager",
                                                api_version="batch/v1"), **extra),
        "spec": {"backoffLimit": 6, "completions": 1, "parallelism": 1,
                 "template": {"metadata": {"labels": labels},
                              "spec": {**_pod_spec(), "restartPolicy": "Never"}}},
        "status": {"active": 1},
    }


def cronjob(namespace: str, name: str, template: Obj | None = None,
            labels: Obj | None = None) -> Obj:
    """A CronJob; its Jobs are `<name>-<scheduled minutes>`."""
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": _meta("CronJob", namespace, name, labels=labels,
                          managedFields=managed("kubectl-client-side-apply",
                                                api_version="batch/v1")),
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"metadata": {"labels": {}}, "spec": {
            "template": {"metadata": {"labels": dict(template or {})},
                         "spec": {**_pod_spec(), "restartPolicy": "OnFailure"}}}}},
        "status": {},
    }


def namespace(name: str, labels: Obj | None = None) -> Obj:
    """A Namespace as PartialObjectMetadata, with the label the apiserver always sets."""
    return partial(_meta("Namespace", "", name,
                         labels={"kubernetes.io/metadata.name": name, **(labels or {})},
                         managedFields=managed("kubectl-create", api_version="v1")))


def rollout(namespace: str, name: str, labels: Obj | None = None) -> Obj:
    """An Argo Rollout (argoproj.io/v1alpha1), the owner of its ReplicaSets."""
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": _meta("Rollout", namespace, name, labels=labels,
                          managedFields=managed("argocd-controller",
                                                api_version="argoproj.io/v1alpha1")),
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": name}},
                                             "spec": _pod_spec()}},
    }


def hpa(namespace: str, name: str, target: str, target_kind: str = "Deployment",
        target_api: str = "apps/v1", labels: Obj | None = None,
        owners: list[Obj] | None = None) -> Obj:
    """A HorizontalPodAutoscaler (autoscaling/v2) as `kubectl autoscale` makes it, with the
    status the controller-manager writes when it cannot read metrics."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("HorizontalPodAutoscaler", namespace, name, labels=labels,
                          ownerReferences=owners,
                          managedFields=managed("kubectl-autoscale", "kube-controller-manager",
                                                api_version="autoscaling/v2")),
        "spec": {"scaleTargetRef": {"apiVersion": target_api, "kind": target_kind,
                                    "name": target},
                 "minReplicas": 1, "maxReplicas": 3,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": 80}}}]},
        "status": {"currentReplicas": 1, "desiredReplicas": 0, "currentMetrics": None,
                   "conditions": [{"type": "AbleToScale", "status": "True",
                                   "lastTransitionTime": TIME, "reason": "SucceededGetScale",
                                   "message": "the HPA controller was able to get the "
                                              "target's current scale"}]},
    }


# -- a view loaded as the watches would load it ----------------------------------

KEPT_LABELS = (*LABEL_KEYS, *DEFAULT_GITOPS.labels)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loaded:
    """A view, its clock and extractor, and `add`/`remove` of API objects."""

    def __init__(self, window: float = 600.0) -> None:
        self.clock = Clock()
        self.view = View(window, clock=self.clock, label_keys=KEPT_LABELS,
                         annotation_keys=DEFAULT_GITOPS.annotations)
        self.extractor = Extractor(KEPT_LABELS, DEFAULT_GITOPS.annotations)
        for store in self.view.stores.values():
            store.listed = store.synced = True

    def record(self, obj: dict[str, Any]) -> Meta:
        """The record the watch of `obj`'s kind would store."""
        group = split_api_version(obj.get("apiVersion", "v1"))[0]
        kind = BY_GROUP_KIND.get((group, obj.get("kind", "")))
        if kind is None or obj.get("kind") == "PartialObjectMetadata":
            raise AssertionError("use add_partial for PartialObjectMetadata")
        meta = record_of(kind, self.extractor, obj)
        assert meta is not None
        return meta

    def add(self, *objs: dict[str, Any]) -> None:
        """Store whole objects (controllers) as their watch would."""
        for obj in objs:
            meta = self.record(obj)
            self.view.put(BY_GROUP_KIND[(split_api_version(obj["apiVersion"])[0],
                                         obj["kind"])].resource, meta)

    def add_partial(self, resource: str, *items: dict[str, Any]) -> list[Meta]:
        """Store PartialObjectMetadata items (pods, namespaces) as their watch would."""
        found = []
        for item in items:
            meta = record_of(BY_RESOURCE[resource], self.extractor, item)
            assert meta is not None
            self.view.put(resource, meta)
            found.append(meta)
        return found

    def fetched(self, obj: dict[str, Any]) -> None:
        """Keep an owner of another kind as the owner fetcher would."""
        meta = self.extractor.record(obj["kind"], obj["metadata"])
        assert meta is not None
        group = split_api_version(obj["apiVersion"])[0]
        self.view.put_fetched((group, obj["kind"], meta.namespace, meta.name), meta)
