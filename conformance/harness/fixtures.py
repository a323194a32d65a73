"""Write the audit events of each scenario as a fixture file, with a README listing them.

`HEALERT_CONFORMANCE_FIXTURES=tests/fixtures/apiserver-1.37` makes the suite write them; by
default they go to the run's working folder only (to look at, never committed by accident).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from conformance.harness.runner import Outcome

_HEADER = """\
# Audit events written by a real kube-apiserver {version}

Each `*.jsonl` file holds the audit events (JSON lines, exactly as the apiserver wrote them
to `--audit-log-path`) of one scenario of the conformance suite: the real `kubectl`
{version} run against a real `kube-apiserver` {version} with the project's own
`manifests/apiserver/audit-policy.yaml` as it was then (its comments say which requests it
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


def write(outcomes: Iterable[Outcome], folder: Path, version: str) -> list[Path]:
    """One `<scenario>.jsonl` per scenario kept as a fixture, and README.md; returns files."""
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
    readme.write_text(_HEADER.format(version=version) + "\n".join(rows) + "\n")
    written.append(readme)
    return written
