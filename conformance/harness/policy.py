"""The audit policy of a run: the one the agent under test writes for the rules it runs
(`healert-webhook policy`), and the request each audit event was decided on, read back
from the event, so the apiserver's decisions can be compared with the package's own
evaluator."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conformance.harness.agents import AGENT
from healert_webhook.auditpolicy.document import Policy, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request


def generate(rules: Path, target: Path, *, cluster_view: bool) -> Path:
    """Write at `target` the policy the agent generates for `rules`; return `target`."""
    argv = [str(AGENT), "policy", "--rules", str(rules),
            "--cluster-view", "on" if cluster_view else "off"]
    # --rules wins over any RULES_PATH, and `policy` reads no other setting.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.strip()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(result.stdout)
    return target


def load(path: Path) -> Policy:
    """The policy in the file, as the apiserver loads it (it must load without a word)."""
    doc = parse_policy(path.read_text())
    if doc.policy is None or doc.problems:
        raise ValueError(f"{path}: " + "; ".join(str(p) for p in doc.problems))
    return doc.policy


def request_of(event: dict[str, Any]) -> Request:
    """The attributes the policy was evaluated on, read back from the event."""
    user = event.get("user") or {}
    who = Identity(user["username"], tuple(user.get("groups") or ())) if user else None
    ref = event.get("objectRef")
    if ref is None:
        return Request(event["verb"], who, path=urlsplit(event["requestURI"]).path)
    name = ref.get("name", "")
    if event["verb"] == "create" and not ref.get("subresource"):
        name = ""  # the apiserver fills it in from the body after the policy decided
    return Request(event["verb"], who, None, ref.get("apiGroup", ""), ref["resource"],
                   ref.get("subresource", ""), ref.get("namespace", ""), name)
