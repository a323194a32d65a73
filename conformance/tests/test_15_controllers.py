"""The real kube-controller-manager makes the objects a cluster has: owner chains, labels, names.

The bootstrap identity (an internal actor) creates workloads in a namespace of their own;
the controllers make ReplicaSets, Jobs and pods with real owner references and the
template's labels (pods stay Pending: no scheduler, no kubelet). Their requests are made
with their own service accounts (`--use-service-account-credentials`), which the generated
audit policy drops like any built-in controller's, and none of them may become a friction
event.

With `HEALERT_CONFORMANCE_OBJECTS=<folder>` (conformance/record-fixtures.sh) the objects are
also written there as `kubectl get -o json --show-managed-fields` shows them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conformance.harness import fixtures, objects
from conformance.harness.cluster import ControlPlane
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from conformance.harness.runner import Runner, is_marker, read_audit_events

pytestmark = pytest.mark.timeout(600)

NS = "controllers"
WHO = ControlPlane.BOOTSTRAP
ENTITY_LABEL = "backstage.io/kubernetes-id"
DS_NODE_LABEL = "conformance.healert.io/daemonset-test"
DS_NODE = "conformance-node-ds"


def _get(cp: ControlPlane, *args: str) -> dict[str, Any]:
    return cp.get_json(WHO, "-n", NS, *args)


def _owner(obj: dict[str, Any]) -> tuple[str, str, str, bool, bool]:
    """(kind, name, uid, controller, blockOwnerDeletion) of the only owner reference."""
    refs = obj["metadata"].get("ownerReferences") or []
    assert len(refs) == 1, f"{obj['metadata']['name']}: {refs}"
    ref = refs[0]
    return (ref["kind"], ref["name"], ref["uid"], bool(ref.get("controller")),
            bool(ref.get("blockOwnerDeletion")))


def _one_owned(cp: ControlPlane, plural: str, owner: dict[str, Any]) -> dict[str, Any]:
    """The only object of `plural` in NS whose owner reference is `owner`'s uid."""
    uid = owner["metadata"]["uid"]
    found: list[dict[str, Any]] = []

    def made() -> bool:
        found[:] = [item for item in _get(cp, plural)["items"]
                    if any(r["uid"] == uid for r in item["metadata"].get("ownerReferences", []))]
        return bool(found)

    wait_for(made, 120, f"a {plural[:-1]} owned by {owner['metadata']['name']}", interval=0.5)
    assert len(found) == 1, [f["metadata"]["name"] for f in found]
    return found[0]


def _create(cp: ControlPlane, item: dict[str, Any]) -> dict[str, Any]:
    out = cp.kubectl(WHO, "create", "-o", "json", "-f", "-", stdin=json.dumps(item)).stdout
    created: dict[str, Any] = json.loads(out)
    return created


@pytest.fixture(scope="module")
def made(env: Environment, runner: Runner) -> dict[str, Any]:
    """Every workload of this file created once; their pods waited for."""
    cp = env.cluster
    runner.sync()
    found: dict[str, Any] = {"serve_seen": set(runner.seen_serve)}
    cp.apply(WHO, [{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": NS, "labels": {ENTITY_LABEL: "controllers-team"}}}])
    wait_for(lambda: cp._service_account_exists(NS, "default"), 60,
             "the default service account of a new namespace")
    found["deployment"] = _create(cp, objects.deployment(
        NS, "orders-api", pod_labels={ENTITY_LABEL: "orders-service"}))
    found["statefulset"] = _create(cp, objects.stateful_set(NS, "orders-db"))
    found["job"] = _create(cp, objects.job(NS, "schema-check"))
    found["generated_job"] = _create(cp, objects.job(NS, generate_name="db-migrate-"))
    found["cronjob"] = _create(cp, objects.cron_job(NS, "nightly-report"))
    found["cronjob_job"] = json.loads(cp.kubectl(
        WHO, "-n", NS, "create", "job", "nightly-report-manual",
        "--from=cronjob/nightly-report", "-o", "json").stdout)
    found["daemonset"] = _create(cp, objects.daemon_set(NS, "log-shipper",
                                                        node_selector={DS_NODE_LABEL: "yes"}))
    found["replicaset"] = _one_owned(cp, "replicasets", found["deployment"])
    for key, owner in (("pod", "replicaset"), ("statefulset_pod", "statefulset"),
                       ("job_pod", "job"), ("generated_job_pod", "generated_job"),
                       ("cronjob_job_pod", "cronjob_job")):
        found[key] = _one_owned(cp, "pods", found[owner])
    return found


def test_deployment_makes_a_replicaset_and_a_pod(made: dict[str, Any]) -> None:
    """Deployment -> ReplicaSet -> Pod, real uids, the template's labels on the pod."""
    deploy, rs, pod = made["deployment"], made["replicaset"], made["pod"]
    assert _owner(rs) == ("Deployment", "orders-api", deploy["metadata"]["uid"], True, True)
    assert _owner(pod) == ("ReplicaSet", rs["metadata"]["name"], rs["metadata"]["uid"],
                           True, True)
    template_labels = deploy["spec"]["template"]["metadata"]["labels"]
    labels = pod["metadata"]["labels"]
    assert labels.items() >= template_labels.items()
    assert labels[ENTITY_LABEL] == "orders-service"
    pod_hash = labels["pod-template-hash"]
    assert rs["metadata"]["name"] == f"orders-api-{pod_hash}"
    assert pod["metadata"]["generateName"] == f"orders-api-{pod_hash}-"
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_statefulset_makes_its_first_pod(made: dict[str, Any]) -> None:
    """StatefulSet `orders-db` -> pod `orders-db-0`, owned by it."""
    sts, pod = made["statefulset"], made["statefulset_pod"]
    assert pod["metadata"]["name"] == "orders-db-0"
    assert _owner(pod) == ("StatefulSet", "orders-db", sts["metadata"]["uid"], True, True)


@pytest.mark.parametrize("key", ["job", "generated_job"])
def test_job_makes_its_pod(made: dict[str, Any], key: str) -> None:
    """A Job (named, or from `generateName`) -> its pod, owned by it and named after it."""
    job, pod = made[key], made[f"{key}_pod"]
    name = job["metadata"]["name"]
    if key == "generated_job":
        assert name.startswith("db-migrate-") and len(name) == len("db-migrate-") + 5
    assert _owner(pod) == ("Job", name, job["metadata"]["uid"], True, True)
    assert pod["metadata"]["generateName"] == f"{name}-"
    assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == name


def test_job_from_cronjob_is_owned_by_the_cronjob(made: dict[str, Any]) -> None:
    """`kubectl create job --from=cronjob/...` -> a Job owned by the CronJob -> its pod."""
    cron, job, pod = made["cronjob"], made["cronjob_job"], made["cronjob_job_pod"]
    kind, name, uid, controller, _ = _owner(job)
    assert (kind, name, uid, controller) == ("CronJob", "nightly-report",
                                             cron["metadata"]["uid"], True)
    assert _owner(pod)[:3] == ("Job", "nightly-report-manual", job["metadata"]["uid"])


def test_daemonset_makes_a_pod_once_a_node_exists(env: Environment,
                                                  made: dict[str, Any]) -> None:
    """No pod while no Node matches its selector; one, for that Node, once one does."""
    cp, ds = env.cluster, made["daemonset"]
    wait_for(lambda: _get(cp, "daemonset", "log-shipper").get("status", {})
             .get("observedGeneration") == 1, 60, "the DaemonSet controller to see it")
    assert not cp.pods_of(NS, "DaemonSet", "log-shipper")
    cp.add_node(DS_NODE, labels={DS_NODE_LABEL: "yes"})
    pod = _one_owned(cp, "pods", ds)
    assert _owner(pod) == ("DaemonSet", "log-shipper", ds["metadata"]["uid"], True, True)
    assert pod["metadata"]["generateName"] == "log-shipper-"
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "metadata.name", "operator": "In", "values": [DS_NODE]} in [
        field for term in terms for field in term.get("matchFields", [])]
    made["daemonset_pod"] = pod


def test_service_account_tokens_are_filled_in(env: Environment, made: dict[str, Any]) -> None:
    """The token controller fills a service-account token Secret of the new namespace."""
    cp = env.cluster
    cp.apply(WHO, [{"apiVersion": "v1", "kind": "Secret", "type":
                    "kubernetes.io/service-account-token", "metadata": {
                        "name": "default-token", "namespace": NS,
                        "annotations": {"kubernetes.io/service-account.name": "default"}}}])
    wait_for(lambda: bool(_get(cp, "secret", "default-token").get("data", {}).get("token")),
             60, "the token controller")


def test_controllers_work_is_not_recorded_nor_friction(env: Environment, runner: Runner,
                                                       made: dict[str, Any]) -> None:
    """The controllers' writes (under their own kube-system service accounts) are not even
    recorded: the generated policy drops kube-system's service accounts, which are the
    built-in controllers and never act for a person. None of this file's requests became a
    friction event."""
    runner.sync()
    creates = [e for e in read_audit_events(env.cluster.layout.audit_log)
               if e.get("verb") == "create" and (e.get("objectRef") or {}).get("namespace") == NS
               and (e.get("objectRef") or {}).get("resource") in ("pods", "replicasets")]
    assert made["pod"] and made["replicaset"], "the controllers made them"
    assert creates == [], {e["user"]["username"] for e in creates}
    new = [r for r in runner.serve.outbox()
           if r["key"] not in made["serve_seen"] and not is_marker(r)]
    assert new == [], [(r["rule"], r["event"].get("actor"), r["event"]["entity_ref"])
                       for r in new]


def test_record_objects(env: Environment, made: dict[str, Any]) -> None:
    """Write the objects as kubectl shows them (for resolution tests without a cluster)."""
    folders = [env.root / "objects"]
    chosen = os.environ.get("HEALERT_CONFORMANCE_OBJECTS")
    if chosen:
        folders.append(Path(chosen))
    written = fixtures.write_objects(env.cluster, folders)
    controllers = json.loads((folders[0] / "controllers.json").read_text())
    names = {(i["kind"], i["metadata"]["name"]) for i in controllers["items"]}
    assert ("Pod", made["pod"]["metadata"]["name"]) in names
    assert ("Job", made["generated_job"]["metadata"]["name"]) in names
    assert all(i["metadata"].get("managedFields") for i in controllers["items"])
    assert len(written) == 5 * len(folders)


def test_garbage_collector_and_namespace_controller(env: Environment,
                                                    made: dict[str, Any]) -> None:
    """Deleting the Deployment removes its ReplicaSet and pod (garbage collector);
    deleting the namespace removes everything in it (namespace controller)."""
    cp = env.cluster
    rs, pod = made["replicaset"]["metadata"]["name"], made["pod"]["metadata"]["name"]
    cp.kubectl(WHO, "-n", NS, "delete", "deployment", "orders-api", "--wait=false")

    def gone(*what: str) -> bool:
        return cp.kubectl(WHO, "-n", NS, "get", *what, check=False).returncode != 0

    wait_for(lambda: gone("replicaset", rs) and gone("pod", pod), 120, "garbage collection")
    cp.kubectl(WHO, "delete", "namespace", NS, "--wait=false")
    cp.kubectl(WHO, "delete", "node", DS_NODE, "--wait=false")
    wait_for(lambda: cp.kubectl(WHO, "get", "namespace", NS, check=False).returncode != 0,
             180, "the namespace controller to delete the namespace")


def _can(env: Environment, verb: str, group: str, resource: str) -> bool:
    """Whether the cluster-view identity may (`resource` may be `pods/log`)."""
    resource, _, subresource = resource.partition("/")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "group": group,
                                              "resource": resource,
                                              "subresource": subresource}}}
    with env.cluster.client_for("agent-cluster-view") as client:
        answer = client.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                             json=review)
    answer.raise_for_status()
    allowed: bool = answer.json()["status"].get("allowed", False)
    return allowed


def test_cluster_view_identity_reads_exactly_what_the_view_caches(env: Environment) -> None:
    """The agent's cluster-view identity may get, list and watch the cached kinds
    cluster-wide (only list and watch HPAs, which it never reads by name), and nothing
    else."""
    for group, resources in objects.CLUSTER_VIEW_RESOURCES:
        for resource in resources:
            for verb in ("get", "list", "watch"):
                assert _can(env, verb, group, resource), (verb, group, resource)
            for verb in ("create", "patch", "delete"):
                assert not _can(env, verb, group, resource), (verb, group, resource)
    for group, resources in objects.CLUSTER_VIEW_LISTED:
        for resource in resources:
            for verb in ("list", "watch"):
                assert _can(env, verb, group, resource), (verb, group, resource)
            for verb in ("get", "create", "patch", "delete"):
                assert not _can(env, verb, group, resource), (verb, group, resource)
    for verb, group, resource in (("get", "", "secrets"), ("list", "", "configmaps"),
                                  ("get", "", "pods/log"), ("list", "", "nodes")):
        assert not _can(env, verb, group, resource), (verb, group, resource)
