"""A rolling restart of the webhook agent on one node while audit traffic flows.

The old agent stops and a new one starts on the same port and state directory, as a
DaemonSet replaces a node's pod: with maxSurge 0 (the port closed for a while: the pod's
replacement and image pull) and with maxSurge 1 (the new agent shares the ports before
the old one stops). Either way every read alice made reaches the outbox exactly once and
the apiserver drops nothing; the figures (how many reads arrived through the apiserver's
retries, and how late) are printed for docs/operations.md. `python -m conformance.harness
rolling` measures other gaps.

Then the shipped node-local DaemonSet itself, under the real DaemonSet controller: it
declares no ports (the API server would make them host ports, which a second pod on the
node may not hold), and a changed template makes the new pod beside the old one, which
is deleted only once the new one has been ready for minReadySeconds.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from conformance.harness.cluster import REPO, ControlPlane
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from conformance.harness.rolling import roll
from conformance.harness.runner import Runner

pytestmark = pytest.mark.timeout(900)

# Longer than the apiserver's first retry (10 s), well inside its last (about 81 s).
CLOSED_SECONDS = 20.0


@pytest.mark.parametrize(("strategy", "gap"), [("replace", CLOSED_SECONDS), ("surge", 0.0)])
def test_a_rolling_restart_loses_nothing(env: Environment, runner: Runner, strategy: str,
                                         gap: float) -> None:
    result = roll(env, runner, strategy, gap=gap)
    print(result.line())
    assert not result.load.errors, result.load.errors[:3]
    assert result.reads >= 100, "the load ran before, during and after the restart"
    assert result.stored == result.reads, result.line()
    assert result.twice == 0, result.line()
    assert result.dropped == 0, result.line()
    if strategy == "replace":
        assert result.closed_seconds >= CLOSED_SECONDS
        assert result.resent > 0, "reads made while the port was closed came by retries"
    assert env.agents.serve is not None and env.agents.serve.proc.alive()


# -- the shipped DaemonSet rolls with a surge pod --------------------------------------------

SURGE_NODE = "surge-control-plane"
DAEMONSET = REPO / "manifests" / "node-local" / "daemonset.yaml"
SERVICE_ACCOUNT = REPO / "manifests" / "common" / "10-serviceaccount.yaml"


def _ready_now(cp: ControlPlane, pod: dict[str, Any]) -> float:
    """Report the pod Running and Ready from now on (what its kubelet would); returns now."""
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": stamp}],
        "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0,
                               "image": c["image"], "imageID": "",
                               "state": {"running": {"startedAt": stamp}}}
                              for c in pod["spec"]["containers"]]}}
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    with cp.client_for(ControlPlane.BOOTSTRAP) as client:
        client.patch(path, content=json.dumps(status),
                     headers={"Content-Type": "application/merge-patch+json"}
                     ).raise_for_status()
    return now


def _bind(cp: ControlPlane, pod: dict[str, Any]) -> dict[str, Any]:
    """Bind the pod to the surge node (what the scheduler would); returns it."""
    name = pod["metadata"]["name"]
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
               "target": {"apiVersion": "v1", "kind": "Node", "name": SURGE_NODE}}
    with cp.client_for(ControlPlane.BOOTSTRAP) as client:
        client.post(f"/api/v1/namespaces/healert-system/pods/{name}/binding",
                    json=binding).raise_for_status()
    return pod


def _pods_on_the_node(cp: ControlPlane) -> list[dict[str, Any]]:
    return [p for p in cp.pods_of("healert-system", "DaemonSet", "healert-webhook")
            if SURGE_NODE in json.dumps(p["spec"].get("affinity", {}))]


def test_the_api_server_makes_a_host_network_pods_ports_host_ports(env: Environment) -> None:
    """Why the node-local DaemonSet declares no ports: on the host network every declared
    container port becomes a host port, which the scheduler's NodePorts filter and the
    kubelet's admission refuse to a second pod on the same node."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "host-port-probe", "namespace": "healert-system"},
           "spec": {"hostNetwork": True, "containers": [{
               "name": "main", "image": "registry.invalid/conformance/app:1",
               "ports": [{"name": "webhook", "containerPort": 18443}]}]}}
    created = json.loads(env.cluster.kubectl(
        ControlPlane.BOOTSTRAP, "create", "--dry-run=server", "-o", "json", "-f", "-",
        stdin=json.dumps(pod)).stdout)
    assert created["spec"]["containers"][0]["ports"][0]["hostPort"] == 18443


def test_the_node_local_daemonset_replaces_a_pod_only_beside_it(env: Environment) -> None:
    """The shipped DaemonSet under the real DaemonSet controller: a changed template makes
    the new pod beside the old one on the node, and the old one is deleted only after the
    new one has been ready for minReadySeconds."""
    cp = env.cluster
    daemonset = yaml.safe_load(DAEMONSET.read_text())
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                                    "maxUnavailable": 0}
    minimum = daemonset["spec"]["minReadySeconds"]
    cp.kubectl(ControlPlane.BOOTSTRAP, "apply", "-f", str(SERVICE_ACCOUNT), "-f", str(DAEMONSET))
    try:
        cp.add_node(SURGE_NODE, labels={"node-role.kubernetes.io/control-plane": ""})
        wait_for(lambda: len(_pods_on_the_node(cp)) == 1, 120, "the DaemonSet's pod")
        [old] = _pods_on_the_node(cp)
        assert all(not c.get("ports") for c in old["spec"]["containers"]), "no host ports"
        _ready_now(cp, _bind(cp, old))
        time.sleep(minimum + 1)  # the old pod is available
        cp.kubectl(ControlPlane.BOOTSTRAP, "-n", "healert-system", "patch", "daemonset",
                   "healert-webhook", "--type=merge", "-p", json.dumps({"spec": {"template": {
                       "metadata": {"annotations": {"conformance/rollout": "1"}}}}}))
        wait_for(lambda: len(_pods_on_the_node(cp)) == 2, 120, "the surge pod beside the old")
        new = next(p for p in _pods_on_the_node(cp)
                   if p["metadata"]["name"] != old["metadata"]["name"])
        assert not _deleting(cp, old), "the old pod stays while the new one is not ready"
        ready = _ready_now(cp, _bind(cp, new))
        wait_for(lambda: _deleting(cp, old), 120, "the old pod's deletion", interval=0.5)
        waited = time.time() - ready
        print(f"surge: the old pod was deleted {waited:.1f} s after the new one was ready "
              f"(minReadySeconds {minimum})")
        assert waited >= minimum
        assert not _deleting(cp, new)
    finally:
        cp.kubectl(ControlPlane.BOOTSTRAP, "-n", "healert-system", "delete", "daemonset",
                   "healert-webhook", "--wait=false", check=False)
        for pod in _pods_on_the_node(cp):
            cp.kubectl(ControlPlane.BOOTSTRAP, "-n", "healert-system", "delete", "pod",
                       pod["metadata"]["name"], "--grace-period=0", "--force", check=False)
        cp.kubectl(ControlPlane.BOOTSTRAP, "delete", "node", SURGE_NODE, "--wait=false",
                   check=False)


def _deleting(cp: ControlPlane, pod: dict[str, Any]) -> bool:
    found = cp.kubectl(ControlPlane.BOOTSTRAP, "-n", "healert-system", "get", "pod",
                       pod["metadata"]["name"], "-o", "json", check=False)
    return found.returncode != 0 or "deletionTimestamp" in json.loads(found.stdout)["metadata"]
