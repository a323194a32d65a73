"""Write the audit events of each scenario as a fixture file, with a README listing them,
and the objects the controllers made as `kubectl get -o json` shows them.

`HEALERT_CONFORMANCE_FIXTURES=tests/fixtures/apiserver-1.37` makes the suite write the
events, `HEALERT_CONFORMANCE_OBJECTS=tests/fixtures/apiserver-1.37-objects` the objects; by
default they go to the run's working folder only (to look at, never committed by accident).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from conformance.harness.cluster import ControlPlane
from conformance.harness.runner import Outcome

_HEADER = """\
# Audit events written by a real kube-apiserver {version}

Each `*.jsonl` file holds the audit events (JSON lines, exactly as the apiserver wrote them
to `--audit-log-path`) of one scenario of the conformance suite: the real `kubectl`
{version} run against a real `kube-apiserver` {version} with the audit policy the agent
generated for the rules it ran (`healert-webhook policy`; its comments say which requests it
records at which level, and where it keeps managedFields).
The same events reached the agent's webhook in EventList batches, where items carry no
`kind`/`apiVersion`.

How they were made: `conformance/record-fixtures.sh` (the suite of `conformance/` with
`HEALERT_CONFORMANCE_FIXTURES` pointing here). The cluster has no kubelet: pods are bound
to a Node whose kubelet port nothing listens on, so exec, attach, port-forward and logs
pass authentication, authorization and admission and then fail reaching the kubelet (codes
101 with the error on the stream, or 500); they are audited all the same. Names and
identities are the suite's (`conformance/harness/objects.py`): people `alice`, `bob`, `eve`
(no rights), `conformance-admin` (system:masters), the access proxy
`system:serviceaccount:access-system:access-proxy`. Certificates, tokens and hosts were
throwaway and loopback only; Secrets are audited at Metadata level, so no Secret content
is in any file. kubectl was built from the module without its git commit, so its User-Agent
ends in `kubernetes/$Format` where a release build has a commit hash.

The friction events each file must produce (with every rule of `rules.yaml` enabled) are
in `conformance/harness/scenarios.py`.

| file | what happened | events |
|---|---|---|
"""


def write(outcomes: Iterable[Outcome], folder: Path, version: str,
          header: str = _HEADER) -> list[Path]:
    """One `<scenario>.jsonl` per scenario kept as a fixture, and README.md (`header`, with
    `{version}` filled in, then one table row per file); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows: list[str] = []
    for outcome in outcomes:
        if not outcome.scenario.fixture or not outcome.audit_events:
            continue
        path = folder / f"{outcome.scenario.name}.jsonl"
        path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n"
                                for e in outcome.audit_events))
        written.append(path)
        rows.append(f"| `{path.name}` | {outcome.scenario.what} | "
                    f"{len(outcome.audit_events)} |")
    readme = folder / "README.md"
    readme.write_text(header.format(version=version) + "\n".join(rows) + "\n")
    written.append(readme)
    return written


OBJECT_NAMESPACES = ("controllers", "payments", "shop")
OBJECT_KINDS = "deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs,pods"

_OBJECTS_README = """\
# Objects a real kube-apiserver and kube-controller-manager {version} made

Each file is what `kubectl get ... -o json --show-managed-fields` printed (a v1 `List`),
recorded by `conformance/record-fixtures.sh` (`conformance/tests/test_15_controllers.py`).
The workloads were created by `system:conformance-bootstrap`; their ReplicaSets, Jobs and
pods were made by the controller-manager's controllers, so owner references carry real
uids, pods carry their template's labels, and generated names are the controllers' own.
No scheduler or kubelet runs: pods stay Pending, except one pod of each workload in
`payments` and `shop` that the harness bound to `conformance-node` and reported Running.

- `controllers.json`: Deployment `orders-api` (its pod template labelled
  `backstage.io/kubernetes-id: orders-service`) with its ReplicaSet and pod; StatefulSet
  `orders-db` and `orders-db-0`; Job `schema-check`, a Job from `generateName: db-migrate-`,
  CronJob `nightly-report` and the Job `kubectl create job --from=cronjob/nightly-report`
  made, each with its pod; DaemonSet `log-shipper` (node selector) and its pod for the Node
  `conformance-node-ds`.
- `payments.json`: Deployments `payments-api` and `ledger` (fields managed by
  `argocd-controller`), StatefulSet `postgres`, DaemonSet `nvidia-dcgm`, their ReplicaSets
  and pods, and whatever the suite's scenarios left there when they ran first.
- `shop.json`: Deployment `checkout` (Argo CD's tracking annotation; its pods labelled
  `backstage.io/kubernetes-id: shop-checkout`), its ReplicaSet and pods.
- `namespaces.json`: every Namespace; `controllers` is labelled
  `backstage.io/kubernetes-id: controllers-team`.
"""


def write_objects(cp: ControlPlane, folders: Iterable[Path], *,
                  namespaces: Iterable[str] = OBJECT_NAMESPACES, kinds: str = OBJECT_KINDS,
                  readme_text: str = _OBJECTS_README) -> list[Path]:
    """One `kubectl get -o json --show-managed-fields` List of `kinds` per namespace of
    `namespaces`, one of every Namespace, and a README (`readme_text` with `{version}`
    filled in), in each of `folders`."""
    who = cp.BOOTSTRAP
    lists = {f"{ns}.json": cp.get_json(who, "-n", ns, kinds, "--show-managed-fields")
             for ns in namespaces}
    lists["namespaces.json"] = cp.get_json(who, "namespaces", "--show-managed-fields")
    readme = readme_text.format(version=cp.bin.version())
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in lists.items():
            path = folder / name
            path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
            written.append(path)
        (folder / "README.md").write_text(readme)
        written.append(folder / "README.md")
    return written
