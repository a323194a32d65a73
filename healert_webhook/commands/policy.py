"""`healert-webhook policy`: the audit policy the rules need, or what a given policy starves.

Without `--check` it prints the audit.k8s.io/v1 Policy that records what the enabled
rules need and nothing else (deterministic, commented: each policy rule names the
detection rules it serves). With `--check FILE` it evaluates FILE the way the apiserver
does against the same needs and prints every detection rule it starves (naming the
policy rule that decides), every Secret it records above Metadata and every key the
apiserver would refuse or ignore.

Exit codes (exits.py): OK; FAILED when `--check` found anything or FILE cannot be read;
CONFIG when the rules cannot be used or cannot be written as a policy as asked (a custom
resource whose group is unknown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from healert_webhook import exits
from healert_webhook.auditpolicy.check import Finding, FindingKind, check, exit_status
from healert_webhook.auditpolicy.document import is_group_name
from healert_webhook.auditpolicy.generate import GenerateError, generate
from healert_webhook.auditpolicy.needs import Needs, NeedsError, needs_of
from healert_webhook.commands.base import Settable
from healert_webhook.config import Settings
from healert_webhook.filewatch import NotRegularFile, read_regular
from healert_webhook.rules import RuleSet, load_rules

NAME = "policy"
HELP = "print the audit policy the rules need, or check a policy against them"
GROUPS: tuple[str, ...] = ("rules",)
MAX_POLICY_BYTES = 4 * 1024 * 1024
# The order findings are printed in: what stops the apiserver first.
_KIND_ORDER = (FindingKind.REFUSED, FindingKind.IGNORED, FindingKind.EXPOSURE,
               FindingKind.STARVED)


def parse_group(text: str) -> tuple[str, str]:
    """`RESOURCE=GROUP` (e.g. `widgets=example.com`) as a pair."""
    resource, sep, group = text.strip().partition("=")
    resource, group = resource.strip(), group.strip()
    if not sep or not resource or not group:
        raise argparse.ArgumentTypeError(f"expected RESOURCE=GROUP, got {text!r}")
    if not is_group_name(group):
        raise argparse.ArgumentTypeError(
            f"{group!r} is not an API group name (a lower-case DNS name without a version, "
            "e.g. example.com)")
    return resource, group


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """--check, and what the rules alone do not say: the cluster view, the proxies, the
    groups of custom resources."""
    add_settings(parser)
    parser.add_argument("--check", metavar="FILE", type=Path, default=None,
                        help="check this policy against what the rules need instead of "
                             "printing one; exit 1 when anything is found")
    parser.add_argument("--cluster-view", choices=("on", "off"), default="on",
                        help="whether the agent watches the cluster (HEALERT_CLUSTER_VIEW "
                             "not off and an identity to read it with, as the chart "
                             "gives it): GitOps ownership and entities are then read from "
                             "the cluster, not from request bodies (default on)")
    parser.add_argument("--proxy", metavar="USER", action="append", default=[],
                        help="the user an access proxy authenticates as (repeatable), e.g. "
                             "system:serviceaccount:teleport:teleport: its requests get "
                             "what people's get and other service accounts are dropped. "
                             "Without one, every service account outside kube-system is "
                             "kept for what people's requests need")
    parser.add_argument("--group", metavar="RESOURCE=GROUP", type=parse_group,
                        action="append", default=[],
                        help="the API group of a custom resource the rules name "
                             "(repeatable; a resource in several groups takes several)")
    parser.add_argument("--any-group", action="store_true",
                        help="write group \"*\" for a custom resource whose group is "
                             "unknown (kube-apiserver 1.35 and later; older ones refuse "
                             "to start on it)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print the policy, or check the one of `--check`."""
    ruleset = load_rules(settings.rules_path)
    groups: dict[str, list[str]] = {}
    for resource, group in args.group:
        groups.setdefault(resource, []).append(group)
    try:
        needs = needs_of(ruleset, cluster_view=args.cluster_view == "on", groups=groups,
                         proxies=args.proxy)
    except NeedsError as exc:
        print(f"policy: {exc}", file=sys.stderr)
        return exits.CONFIG
    if args.check is not None:
        return run_check(args.check, needs, ruleset, view=args.cluster_view)
    try:
        text = generate(needs, any_group=args.any_group)
    except GenerateError as exc:
        print(f"policy: cannot write the policy for {ruleset.source}: {exc}. Give the "
              "group with --group RESOURCE=GROUP, or allow every group with --any-group",
              file=sys.stderr)
        return exits.CONFIG
    sys.stdout.write(text)
    return exits.OK


def run_check(path: Path, needs: Needs, ruleset: RuleSet, *, view: str,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Check the policy file at `path` against `needs`; print the findings and a summary
    line; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    text = _read_policy(path, err)
    if text is None:
        return exits.FAILED
    findings = check(text, needs)
    for finding in sorted(findings, key=_order):
        print(f"{finding.kind.value}: {finding}", file=out)
    rules = ", ".join(sorted({need.rule for need in needs.needs})) or "none"
    checked = f"the enabled rules of {ruleset.source} ({rules}; cluster view {view})"
    if findings:
        counts = ", ".join(f"{sum(1 for f in findings if f.kind is kind)} {kind.value}"
                           for kind in _KIND_ORDER if any(f.kind is kind for f in findings))
        print(f"{path}: {len(findings)} finding(s) ({counts}) against {checked}", file=out)
    else:
        print(f"{path}: gives {checked} everything they need", file=out)
    return exit_status(findings)


def _order(finding: Finding) -> tuple[int, int, str]:
    return (_KIND_ORDER.index(finding.kind), finding.policy_rule or 0, finding.message)


def _read_policy(path: Path, err: TextIO) -> str | None:
    """The policy file's text, or None after saying why it cannot be read."""
    try:
        raw = read_regular(path, MAX_POLICY_BYTES)  # a FIFO at the path never blocks us
    except NotRegularFile as exc:
        print(f"policy: {path}: {exc.strerror}", file=err)
        return None
    except OSError as exc:
        print(f"policy: {path}: cannot read: {exc.strerror}", file=err)
        return None
    if len(raw) > MAX_POLICY_BYTES:
        print(f"policy: {path}: larger than {MAX_POLICY_BYTES} bytes; no audit policy is",
              file=err)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"policy: {path}: not UTF-8 (byte {exc.start})", file=err)
        return None
