"""The kinds the view watches, and how an owner reference's apiVersion and kind map to them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Kind:
    """One watched resource: its plural, kind, API group and version, scope."""

    resource: str
    kind: str
    group: str
    version: str
    namespaced: bool
    # Pods and namespaces are watched as metadata only (pods are the bulk of a cluster);
    # controllers whole, for the labels of their pod template.
    metadata_only: bool = False
    # Its objects are about what their `spec.scaleTargetRef` names (autoscalers): watched
    # whole for that reference, which resolution follows instead of an owner.
    scales: bool = False

    @property
    def api_version(self) -> str:
        """`v1` for the core group, else `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection(self) -> str:
        """The path of the collection across all namespaces, e.g. `/apis/apps/v1/deployments`."""
        return f"{prefix(self.group, self.version)}/{self.resource}"


def prefix(group: str, version: str) -> str:
    """`/api/v1` for the core group, else `/apis/<group>/<version>`."""
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


def split_api_version(api_version: str) -> tuple[str, str]:
    """(group, version) of an apiVersion: `apps/v1` -> (apps, v1), `v1` -> ('', v1)."""
    group, _, version = api_version.rpartition("/")
    return group, version


# What resolution and GitOps detection read: the workloads, their owners' kinds, the
# namespaces (a namespace may declare the entity of what is in it) and the autoscalers
# (an HPA is charged to the workload it scales, which a Metadata-level event does not name).
WATCHED: tuple[Kind, ...] = (
    Kind("pods", "Pod", "", "v1", True, metadata_only=True),
    Kind("replicasets", "ReplicaSet", "apps", "v1", True),
    Kind("deployments", "Deployment", "apps", "v1", True),
    Kind("statefulsets", "StatefulSet", "apps", "v1", True),
    Kind("daemonsets", "DaemonSet", "apps", "v1", True),
    Kind("jobs", "Job", "batch", "v1", True),
    Kind("cronjobs", "CronJob", "batch", "v1", True),
    Kind("namespaces", "Namespace", "", "v1", False, metadata_only=True),
    Kind("horizontalpodautoscalers", "HorizontalPodAutoscaler", "autoscaling", "v2", True,
         scales=True),
)
BY_RESOURCE: dict[str, Kind] = {k.resource: k for k in WATCHED}
BY_GROUP_KIND: dict[tuple[str, str], Kind] = {(k.group, k.kind): k for k in WATCHED}
# Controllers: an object of these kinds with no owner is the top of its own chain.
CONTROLLERS = frozenset({"replicasets", "deployments", "statefulsets", "daemonsets", "jobs",
                         "cronjobs"})


def watched_kind(api_version: str, kind: str) -> Kind | None:
    """The watched kind an owner reference points at, or None (another kind: a CRD...)."""
    return BY_GROUP_KIND.get((split_api_version(api_version)[0], kind))
