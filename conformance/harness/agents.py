"""The two agents under test: `healert-webhook serve` (webhook) and `healert-webhook tail`.

Each has its own state directory, so their outboxes can be compared. Neither is given a
backend unless asked, so every friction event stays in its outbox for `outbox list`.
Neither is given a way to read the cluster unless asked (`ClusterView`): today's agent does
not read it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conformance.harness import pki
from conformance.harness.cluster import REPO, WEBHOOK_CLIENT_CN, WebhookTarget, parse_metrics
from conformance.harness.procs import Proc, free_port, wait_for

# The agent under test: the repository's venv, unless HEALERT_CONFORMANCE_AGENT names another
# executable (e.g. a wrapper that runs a snapshot of the package).
AGENT = Path(os.environ.get("HEALERT_CONFORMANCE_AGENT")
             or REPO / ".venv" / "bin" / "healert-webhook")
# The rules the agents run, with every optional rule enabled: the shipped file, unless
# HEALERT_CONFORMANCE_RULES names another (the one of the agent HEALERT_CONFORMANCE_AGENT runs).
SHIPPED_RULES = Path(os.environ.get("HEALERT_CONFORMANCE_RULES") or REPO / "rules.yaml")
# How the agents get their cluster-view kubeconfig: "flag" (--kubeconfig), "env"
# (KUBECONFIG) or unset (none: the agent runs without a view of the cluster).
CLUSTER_VIEW_VIA = os.environ.get("HEALERT_CONFORMANCE_CLUSTER_VIEW") or None


@dataclass(frozen=True)
class ClusterView:
    """The kubeconfig the agents read the cluster with, and how they are given it."""

    kubeconfig: Path
    via: str = "flag"   # "flag": --kubeconfig PATH; "env": KUBECONFIG=PATH

    def __post_init__(self) -> None:
        if self.via not in ("flag", "env"):
            raise ValueError(f"cluster view via {self.via!r}: 'flag' or 'env'")

    def argv(self) -> list[str]:
        """The agent's command-line arguments for it."""
        return ["--kubeconfig", str(self.kubeconfig)] if self.via == "flag" else []

    def env(self) -> dict[str, str]:
        """The agent's environment for it."""
        return {"KUBECONFIG": str(self.kubeconfig)} if self.via == "env" else {}


def all_rules_enabled(target: Path, source: Path = SHIPPED_RULES) -> Path:
    """The shipped rules file with every optional rule switched on, written to `target`."""
    lines = [line.replace("enabled: false", "enabled: true")
             if line.strip() == "enabled: false" else line
             for line in source.read_text().splitlines(keepends=True)]
    target.write_text("".join(lines))
    return target


def _agent_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment without any setting of the caller's own agent."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALERT_", "KUBE")) and k not in
            ("RULES_PATH", "AUDIT_LOG_PATH", "ENTITY_NAMESPACE", "K8S_NAMESPACE")}
    keep.update(extra)
    return keep


@dataclass
class Agent:
    """One agent process: its argv, state directory and ops port."""

    name: str
    proc: Proc
    state_dir: Path
    ops_port: int

    def start(self) -> Agent:
        """Start it and wait for /readyz (the tail agent waits for its file to exist)."""
        self.proc.start()
        wait_for(self._up, 60, f"{self.name} ops listener")
        return self

    def _up(self) -> bool:
        self.proc.check_alive()
        return httpx.get(self.url("/healthz"), timeout=2).status_code == 200

    def ready(self) -> bool:
        """True when /readyz answers 200."""
        try:
            return httpx.get(self.url("/readyz"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, path: str) -> str:
        """A URL on the ops listener."""
        return f"http://127.0.0.1:{self.ops_port}{path}"

    def metrics(self) -> dict[str, float]:
        """The agent's healert_* samples."""
        text = httpx.get(self.url("/metrics"), timeout=5).text
        return parse_metrics(text, ("healert_",))

    def outbox(self) -> list[dict[str, Any]]:
        """Every queued friction event: {key, rule, event, ...} (the agent may be running)."""
        result = subprocess.run(
            [str(AGENT), "outbox", "list", "--json", "--limit", "1000000",
             "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, env=_agent_env({}), timeout=60, check=True,
            cwd=self.state_dir.parent)
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def stop(self) -> int | None:
        """SIGTERM and wait."""
        return self.proc.stop()

    def kill(self) -> None:
        """SIGKILL."""
        self.proc.kill()


class AgentSet:
    """The webhook agent and the tail agent of one run, with the webhook's PKI."""

    def __init__(self, root: Path, audit_log: Path, rules: Path,
                 cluster_view: ClusterView | None = None) -> None:
        self.root = root
        self.audit_log = audit_log
        self.rules = rules
        self.cluster_view = cluster_view
        self.webhook_port = free_port()
        self.pki_dir = root / "webhook-pki"
        self.logs = root / "logs"
        self.serve: Agent | None = None
        self.tail: Agent | None = None
        self.backend_url: str | None = None

    def prepare(self) -> WebhookTarget:
        """Certificates and tokens for the webhook; returns what the apiserver needs."""
        for folder in (self.root, self.pki_dir, self.logs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = pki.new_authority(self.pki_dir, "webhook-ca", "healert webhook CA")
        self.server_pair = pki.issue(ca, self.pki_dir, "server", "healert-webhook",
                                     server=True, dns=("localhost",), ips=("127.0.0.1",))
        client = pki.issue(ca, self.pki_dir, "apiserver-client", WEBHOOK_CLIENT_CN,
                           client=True)
        self.ca = ca.files.cert
        token = self.pki_dir / "apiserver-token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_urlsafe(32) + "\n")
        self.token_file = token
        return WebhookTarget(f"https://127.0.0.1:{self.webhook_port}/audit", self.ca,
                             client, token)

    def serve_agent(self, backend_url: str | None = None) -> Agent:
        """The `serve` process (not started), on the fixed webhook port."""
        state = self.root / "serve-state"
        ops = free_port()
        argv = [str(AGENT), "serve", "--listen", f"127.0.0.1:{self.webhook_port}",
                "--ops-listen", f"127.0.0.1:{ops}", "--state-dir", str(state),
                "--rules", str(self.rules),
                "--tls-cert", str(self.server_pair.cert), "--tls-key", str(self.server_pair.key),
                "--tls-client-ca", str(self.ca), "--tls-client-names", WEBHOOK_CLIENT_CN,
                "--webhook-token-file", str(self.token_file), "--log-format", "json"]
        if backend_url:
            argv += ["--backend-url", backend_url, "--forward-rate", "60000",
                     "--backoff-max", "2", "--forward-poll-interval", "0.2"]
        argv, env = self._with_cluster_view(argv)
        proc = Proc("serve", argv, self.logs / "serve.log", env=_agent_env(env), cwd=self.root)
        return Agent("serve", proc, state, ops)

    def tail_agent(self) -> Agent:
        """The `tail` process (not started), reading the audit log from its start."""
        state = self.root / "tail-state"
        ops = free_port()
        argv = [str(AGENT), "tail", "--audit-log", str(self.audit_log), "--from", "start",
                "--state-dir", str(state), "--ops-listen", f"127.0.0.1:{ops}",
                "--rules", str(self.rules), "--poll-interval", "0.05", "--log-format", "json"]
        argv, env = self._with_cluster_view(argv)
        proc = Proc("tail", argv, self.logs / "tail.log", env=_agent_env(env), cwd=self.root)
        return Agent("tail", proc, state, ops)

    def _with_cluster_view(self, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        if self.cluster_view is None:
            return argv, {}
        return argv + self.cluster_view.argv(), self.cluster_view.env()

    def start(self, tail: bool = True) -> None:
        """Start the webhook agent, and the tail agent unless `tail` is false."""
        self.serve = self.serve_agent().start()
        if tail:
            self.tail = self.tail_agent().start()

    def restart_serve(self, backend_url: str | None = None) -> Agent:
        """A new `serve` process on the same port and state directory."""
        if self.serve is not None:
            self.serve.stop()
        self.serve = self.serve_agent(backend_url).start()
        return self.serve

    def restart_tail(self) -> Agent:
        """A new `tail` process on the same state directory (it resumes its checkpoint)."""
        if self.tail is not None:
            self.tail.stop()
        self.tail = self.tail_agent().start()
        return self.tail

    def stop(self) -> None:
        """Stop both agents."""
        for agent in (self.serve, self.tail):
            if agent is not None:
                agent.stop()
