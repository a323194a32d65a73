"""One conformance environment: the two agents, etcd and kube-apiserver, started together."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from conformance.harness.agents import AgentSet, all_rules_enabled
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
    """Agents first (so the webhook is there), then the control plane; stop in reverse."""

    def __init__(self, root: Path, bins: Binaries | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rules = all_rules_enabled(root / "rules.yaml")
        self.agents = AgentSet(root / "agents", root / "cluster" / "audit" / "audit.log",
                               self.rules)
        self.target = self.agents.prepare()
        self.cluster = ControlPlane(bins or binaries(), root / "cluster", self.target)

    def start(self) -> Environment:
        """Start everything; on failure stop what was started and re-raise."""
        try:
            self.agents.start()
            self.cluster.start()
        except BaseException:
            self.stop()
            raise
        return self

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
