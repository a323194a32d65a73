"""The breadth cases' audit events as fixtures (tests/fixtures/apiserver-1.37-breadth/),
and replaying them all at once.

`conformance/record-fixtures.sh breadth` runs the breadth cases with the recording policy
(`policies/request-response-everywhere.yaml`) and writes one file per case; without a
cluster, `replay` reads them all in one run and each friction event goes back to its file
by its request time.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conformance.harness import fixtures
from conformance.harness.agents import AGENT
from conformance.harness.breadth_env import ORDERS, STOREFRONT
from conformance.harness.cases import epoch
from conformance.harness.cluster import REPO, ControlPlane
from conformance.harness.runner import Outcome

FOLDER = REPO / "tests" / "fixtures" / "apiserver-1.37-breadth"
RETENTION_DAYS = 36_500

HEADER = """\
# Audit events of issue 26's techniques, written by a real kube-apiserver {version}

Each `*.jsonl` file holds the audit events (JSON lines, exactly as the apiserver wrote them
to `--audit-log-path`) of one case of `conformance/harness/scenarios_breadth.py`: the real
`kubectl` {version} run by a person against a real `kube-apiserver` {version} and
`kube-controller-manager`, with minimal CustomResourceDefinitions of Kyverno's
`PolicyException`, Gatekeeper's `Config`, Flux's `Kustomization` and `HelmRelease` and
Argo CD's `Application` installed (`conformance/harness/crds.py`; no controller of those
tools runs). The friction events each file must produce, with every rule of `rules.yaml`
enabled, are that case's expectations (rule, entity, actor; words its description must
or must not show); the cases without any are what must stay silent.

How they were made: `conformance/record-fixtures.sh breadth`, which runs
`conformance/tests/test_60_breadth.py` with the audit policy
`conformance/policies/request-response-everywhere.yaml`: every request at
RequestResponse (managed fields kept), whoever makes it, except Secrets, token requests
and reviews at Metadata and non-resource URLs, leases and Kubernetes Events not at all. So
every event carries every body the apiserver can give; a unit test can strip one down to
the level a policy would record (Metadata: drop requestObject and responseObject; see
each case's `needs`) but never has to invent a field. The controllers' own requests made
during a case (a ReplicaSet replacing a deleted or evicted pod, the garbage collector)
are in its file too, as a real stream has them.

The cluster has no kubelet and no scheduler: pods are bound to a Node whose kubelet port
nothing listens on and reported Running, so exec, attach and the proxies pass
authentication, authorization and admission and then fail (the apiserver refuses to
proxy to a loopback address, answering 400; a Service without endpoints answers 503),
and `kubectl drain` gives up waiting for the evicted pod. People: `alice`, `bob`
(developers), `dave` (may read pods, not exec), `conformance-admin` (system:masters).
Certificates, tokens and hosts were throwaway and loopback only; the secret-looking
values in `exec-command-secrets.jsonl` are fakes written to test redaction. kubectl was
built from the module without its git commit, so its User-Agent ends in
`kubernetes/$Format`.

| file | what happened | events |
|---|---|---|
"""


ENTITY_OBJECTS = REPO / "tests" / "fixtures" / "apiserver-1.37-entity-objects"
ENTITY_KINDS = ("deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs,pods,services,"
                "secrets")

ENTITY_OBJECTS_README = """\
# The objects of issue 24's entity scenarios, as a real kube-apiserver and
# kube-controller-manager {version} made them

Each file is what `kubectl get ... -o json --show-managed-fields` printed (a v1 `List`)
in the environment of `conformance/harness/breadth_env.py`, right before the cases of
`conformance/harness/scenarios_entity.py` ran (`conformance/record-fixtures.sh breadth`):
the objects whose labels, owner references and names those cases resolve, for unit tests
of resolution without a cluster. Workloads were created by `system:conformance-bootstrap`;
ReplicaSets, Jobs and pods by the controller-manager's controllers (real owner uids,
template labels, generated names). One pod of each workload the cases act on was bound
to a Node and reported Running by the harness; the others stay Pending.

- `orders.json`: Deployment `orders-api` (its pod template alone labelled
  `backstage.io/kubernetes-id: orders-service`), its ReplicaSet, pods and Service;
  Deployment `orders-worker` (the same label); the StatefulSets of three releases of a
  `postgresql` chart (`orders-db`: the backstage id on the StatefulSet and its pods;
  `billing-db`: none; `ledger-db`: on the pods only) and their pods; CronJob
  `nightly-report`, the Job `kubectl create job --from=cronjob/nightly-report` made and
  its pod; Secret `orders-db-credentials` (metadata only: its values are not kept).
- `storefront.json`: Secret `payments-db-credentials` (metadata only).
- `namespaces.json`: every Namespace; `storefront` is labelled
  `backstage.io/kubernetes-id: storefront-team`, `orders` declares no entity.
"""


def write_entity_objects(cp: ControlPlane, folders: Iterable[Path]) -> list[Path]:
    """The entity cases' objects (see ENTITY_OBJECTS_README) in each of `folders`; Secrets
    keep their metadata only."""
    written = fixtures.write_objects(cp, folders, namespaces=(ORDERS, STOREFRONT),
                                     kinds=ENTITY_KINDS, readme_text=ENTITY_OBJECTS_README)
    for path in written:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            for item in doc.get("items", []):
                if item.get("kind") == "Secret":
                    for key in ("data", "stringData"):
                        item.pop(key, None)
                    annotations = item["metadata"].get("annotations") or {}
                    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
            path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return written


def write(outcomes: Iterable[Outcome], folders: Iterable[Path], version: str) -> None:
    """One `<case>.jsonl` per case and the README, in each of `folders`."""
    kept = list(outcomes)
    for folder in folders:
        for old in folder.glob("*.jsonl"):
            old.unlink()
        fixtures.write(kept, folder, version, HEADER)


def replay_all(folder: Path, rules: Path, state: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Replay every file of `folder` in one run; each file's friction events by key."""
    files = sorted(folder.glob("*.jsonl"))
    owner: dict[float, str] = {}
    for path in files:
        for line in path.read_text().splitlines():
            when = epoch(json.loads(line).get("requestReceivedTimestamp"))
            if when is not None:
                owner[when] = path.stem
    state.mkdir(parents=True, exist_ok=True)
    # Recorded events grow old: without a long retention the outbox would set them aside
    # as expired once they are older than the backend's (30 days by default).
    _agent("replay", "--forward", "--rules", str(rules), "--state-dir", str(state),
           "--backend-retention-days", str(RETENTION_DAYS), *[str(p) for p in files],
           cwd=state)
    listed = json.loads(_agent("outbox", "list", "--json", "--limit", "1000000",
                               "--state-dir", str(state), cwd=state))
    found: dict[str, dict[str, dict[str, Any]]] = {p.stem: {} for p in files}
    for row in listed:
        stem = owner.get(epoch(row["event"].get("timestamp")) or -1.0, "")
        found.setdefault(stem, {})[row["key"]] = row
    return found


def _agent(*args: str, cwd: Path) -> str:
    return subprocess.run([str(AGENT), *args], capture_output=True, text=True, timeout=300,
                          check=True, cwd=cwd).stdout
