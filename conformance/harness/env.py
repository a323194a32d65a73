"""One conformance environment: the two agents, etcd, kube-apiserver and
kube-controller-manager, started together."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from conformance.harness import policy
from conformance.harness.agents import CLUSTER_VIEW_VIA, AgentSet, ClusterView, all_rules_enabled
from conformance.harness.cluster import REPO, Binaries, ControlPlane

BUILD = REPO / "conformance" / "build.sh"


def binaries() -> Binaries:
    """The built binaries: `$HEALERT_CONFORMANCE_BIN`, else build.sh's (built if not cached)."""
    folder = os.environ.get("HEALERT_CONFORMANCE_BIN")
    if not folder:
        result = subprocess.run([str(BUILD)], stdout=subprocess.PIPE, text=True, check=True)
        folder = result.stdout.strip().splitlines()[-1]
    return Binaries.from_dir(Path(folder))


class Environment:
    """Agents first (so the webhook is there), then the control plane; stop in reverse.

    `audit_policy` is the apiserver's policy file, by default the one the agent under test
    generates for the rules the agents run (`healert-webhook policy`, with the cluster view
    as the agents have it); `audit_log=False` leaves out the log backend and the tail agent
    (webhook only); `cluster_view` ("flag" or "env", default
    `$HEALERT_CONFORMANCE_CLUSTER_VIEW`, else none) gives both agents the kubeconfig of
    their read-only cluster identity as `--kubeconfig` or `KUBECONFIG`.
    """

    def __init__(self, root: Path, bins: Binaries | None = None, *,
                 audit_policy: Path | None = None, audit_log: bool = True,
                 cluster_view: str | None = CLUSTER_VIEW_VIA) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rules = all_rules_enabled(root / "rules.yaml")
        if audit_policy is None:
            audit_policy = policy.generate(self.rules, root / "audit-policy.yaml",
                                           cluster_view=bool(cluster_view))
        self.audit_policy = audit_policy
        self.audit_log = audit_log
        self.agents = AgentSet(root / "agents", root / "cluster" / "audit" / "audit.log",
                               self.rules)
        self.target = self.agents.prepare()
        self.cluster = ControlPlane(bins or binaries(), root / "cluster", self.target,
                                    audit_policy=audit_policy, audit_log=audit_log)
        if cluster_view:
            self.agents.cluster_view = ClusterView(self.cluster.cluster_view_kubeconfig,
                                                   cluster_view)

    def start(self, cluster_delay: float = 0.0) -> Environment:
        """Start everything; on failure stop what was started and re-raise.

        The agents start first, with every file they need (certificates, the cluster-view
        kubeconfig) already written; `cluster_delay` seconds later etcd, the apiserver and
        the controller-manager start, so the agents run a while before the cluster answers.
        """
        try:
            self.start_agents()
            time.sleep(cluster_delay)
            self.start_cluster()
        except BaseException:
            self.stop()
            raise
        return self

    def start_agents(self) -> None:
        """Write the cluster's files and start the agents (nothing answers at the
        apiserver's address until `start_cluster`)."""
        self.cluster.write_files()
        self.agents.start(tail=self.audit_log)

    def start_cluster(self) -> None:
        """Start etcd, the apiserver and the controller-manager, then bootstrap."""
        self.cluster.start()

    def stop(self) -> None:
        """Apiserver and etcd first (the apiserver flushes its audit buffers), then agents."""
        self.cluster.stop()
        self.agents.stop()

    def describe(self) -> str:
        """Shell lines that tell a person how to use the running environment."""
        c = self.cluster
        lines = [f"# kube-apiserver {c.server}  (logs in {c.layout.logs})",
                 f"# audit log {c.layout.audit_log}"]
        for stem, ident in sorted(c.identities.items()):
            lines.append(f"# as {ident.name or '(bad token)'}:")
            lines.append(f"export KUBECONFIG={shlex.quote(str(ident.kubeconfig))}  # {stem}")
        serve, tail = self.agents.serve, self.agents.tail
        if serve and tail:
            lines.append(f"# serve agent: metrics {serve.url('/metrics')}, "
                         f"state {serve.state_dir}")
            lines.append(f"# tail agent:  metrics {tail.url('/metrics')}, state {tail.state_dir}")
            agent = REPO / ".venv" / "bin" / "healert-webhook"
            lines.append(f"{agent} outbox list --state-dir {serve.state_dir}")
        return "\n".join(lines)
