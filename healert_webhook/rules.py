"""Load, validate and compile rules.yaml.

The file format is the old Go agent's (a `config` block and a `rules` list) with additive
extensions: `enabled`, `points`, `config.gitops`, and the match fields
`ignore_subresources`, `users`, `ignore_users`, `groups`, `ignore_groups`,
`user_agent_contains`, `ignore_user_agent_contains`, `response` and `gitops_managed`. A file
without them behaves as it did. Validation is strict and reports every problem at once,
each with file, line, rule and field, because a typo such as `resouce:` would otherwise
silently widen a rule to every resource. Values the apiserver never writes (`pod`,
`Secrets`, `GET`, `exec` as a verb) are warnings with the fix, since such a rule loads
but never fires.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from healert_webhook.audit import HUMAN_SYSTEM_USERS, RESPONSE_CLASSES
from healert_webhook.backend_contract import SEVERITIES, TYPE_LENGTH
from healert_webhook.backend_contract import TYPE as NAME_RE
from healert_webhook.filewatch import NotRegularFile, read_regular

TOKENS = ("actor", "resource", "name", "namespace", "verb", "subresource", "code", "workload")
TOKEN_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The verbs the apiserver writes into audit events: the request verbs of resource
# requests, and the lower-case HTTP methods of non-resource requests (/healthz, /metrics).
KNOWN_VERBS = frozenset({
    "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
    "proxy", "post", "put", "head", "options",
})
# Requests of these verbs name no single object, so they are never charged to an entity.
NAMELESS_VERBS = frozenset({"list", "watch", "deletecollection"})
DEFAULT_DESCRIPTION = "{verb} on {resource}/{name} (ns:{namespace}) by {actor}"
TOP_KEYS = ("config", "rules")
CONFIG_KEYS = ("ignore_namespaces", "gitops")
GITOPS_KEYS = ("annotations", "labels", "field_managers", "controllers")
RULE_KEYS = ("name", "description", "severity", "workflow", "ignore_system", "enabled",
             "points", "match")
MATCH_KEYS = ("resource", "resources", "subresource", "ignore_subresources", "verb", "verbs",
              "annotation", "namespace_contains", "ignore_namespaces", "users", "ignore_users",
              "groups", "ignore_groups", "user_agent_contains", "ignore_user_agent_contains",
              "response", "gitops_managed")
_LIST_KEYS = ("resources", "verbs", "ignore_namespaces", "ignore_subresources")
_NAME_KEYS = ("users", "ignore_users", "groups", "ignore_groups")
_AGENT_KEYS = ("user_agent_contains", "ignore_user_agent_contains")
MAX_RULES_BYTES = 4 * 1024 * 1024
# Problems and warnings listed one by one (in logs, `validate`, errors); the rest are only
# counted: a 4 MiB file can hold a million problems.
MAX_LISTED = 50
# How often a load looks whether a newer version of the file is waiting: in YAML nodes
# while composing, in rules while validating.
CHECK_NODES = 4096
CHECK_RULES = 256
# libyaml's parser when PyYAML has it (3x faster here; the same nodes, marks and tags).
_BASE_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Decodes YAML 1.1 booleans and integers exactly as the safe loader does.
_SCALARS = yaml.constructor.SafeConstructor()
# Subresources older kubectl sends as `create` on pods; a drift rule on pods should not
# count them (they are exec, attach and port-forward sessions, reported by their own rules).
SESSION_SUBRESOURCES = ("exec", "attach", "portforward")
# Names people write for resources and subresources, and what the apiserver writes instead.
_RESOURCE_FIXES = {
    "pod": "pods", "po": "pods", "secret": "secrets", "deployment": "deployments",
    "deploy": "deployments", "statefulset": "statefulsets", "sts": "statefulsets",
    "daemonset": "daemonsets", "ds": "daemonsets", "replicaset": "replicasets",
    "rs": "replicasets", "job": "jobs", "cronjob": "cronjobs", "cj": "cronjobs",
    "configmap": "configmaps", "cm": "configmaps", "namespace": "namespaces",
    "ns": "namespaces", "node": "nodes", "no": "nodes", "service": "services",
    "svc": "services", "ingress": "ingresses", "ing": "ingresses", "role": "roles",
    "rolebinding": "rolebindings", "clusterrole": "clusterroles",
    "clusterrolebinding": "clusterrolebindings", "serviceaccount": "serviceaccounts",
    "sa": "serviceaccounts", "persistentvolume": "persistentvolumes",
    "pv": "persistentvolumes", "persistentvolumeclaim": "persistentvolumeclaims",
    "pvc": "persistentvolumeclaims", "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies", "horizontalpodautoscaler": "horizontalpodautoscalers",
    "hpa": "horizontalpodautoscalers", "endpoint": "endpoints", "event": "events",
    "ev": "events", "lease": "leases", "customresourcedefinition":
    "customresourcedefinitions", "crd": "customresourcedefinitions",
}
_SUBRESOURCE_FIXES = {
    "port-forward": "portforward", "port_forward": "portforward", "logs": "log",
    "ephemeral-containers": "ephemeralcontainers", "ephemeralcontainer":
    "ephemeralcontainers", "debug": "ephemeralcontainers", "evict": "eviction",
}
_SUBRESOURCE_VERBS = frozenset({"exec", "attach", "portforward", "port-forward", "log",
                                "logs", "scale", "status", "eviction", "ephemeralcontainers"})


class RulesError(Exception):
    """The rules file cannot be used. `problems` lists the first MAX_LISTED reasons in
    file order, one line each; `total` counts them all."""

    def __init__(self, source: str, problems: list[str], total: int | None = None) -> None:
        self.source = source
        self.problems = problems
        self.total = len(problems) if total is None else total
        super().__init__(f"{source}: {self.total} problem(s):\n" + "\n".join(self.lines()))

    def lines(self) -> list[str]:
        """The listed problems, then one line counting those not listed (if any)."""
        return _with_rest(self.problems, self.total, "problem")


class Superseded(Exception):
    """A load was abandoned because a newer version of the file is waiting."""


def _with_rest(listed: Iterable[str], total: int, what: str) -> list[str]:
    out = list(listed)
    if total > len(out):
        out.append(f"... and {total - len(out)} more {what}(s), not listed (the first "
                   f"{len(out)} are, in file order)")
    return out


@dataclass(frozen=True, slots=True)
class NameMatch:
    """User or group names: exact names, and prefixes (written with a trailing `*`)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, value: str) -> bool:
        """True when `value` is one of the names or starts with one of the prefixes."""
        return value in self.exact or (bool(self.prefixes) and value.startswith(self.prefixes))

    def any_of(self, values: Iterable[str]) -> bool:
        """True when any of `values` matches."""
        return any(self.matches(value) for value in values)

    def text(self) -> str:
        """The patterns as written in the file, sorted."""
        return "|".join(sorted(self.exact) + sorted(p + "*" for p in self.prefixes))


@dataclass(frozen=True, slots=True)
class GitOps:
    """What marks an object as managed by a GitOps tool, and the tools' own identities.

    An object is GitOps-managed when it carries one of `annotations` or `labels` (with a
    non-empty value) or lists one of `field_managers` in `metadata.managedFields`. A write
    by one of `controllers` is the tool applying Git, never drift.
    """

    annotations: tuple[str, ...]
    labels: tuple[str, ...]
    field_managers: frozenset[str]
    controllers: NameMatch


# Argo CD's tracking annotation (its default tracking method since 3.0), Flux's
# kustomize-controller and helm-controller labels, and the field managers all three
# apply with. `app.kubernetes.io/instance` is left out: Helm sets it too.
DEFAULT_GITOPS = GitOps(
    annotations=("argocd.argoproj.io/tracking-id",),
    labels=("kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"),
    field_managers=frozenset({"argocd-controller", "kustomize-controller", "helm-controller"}),
    controllers=NameMatch(frozenset({
        "system:serviceaccount:argocd:argocd-application-controller",
        "system:serviceaccount:flux-system:kustomize-controller",
        "system:serviceaccount:flux-system:helm-controller",
    }), ()),
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: match sets are frozensets, the template is pre-split.

    `resources`, `subresource`, `ignore_subresources` and `verbs` are settled by the
    detector's index; the other conditions are checked per candidate event.
    """

    name: str
    description: str
    severity: str
    workflow: str | None
    ignore_system: bool
    enabled: bool
    points: int | None
    resources: frozenset[str] | None
    subresource: str | None
    ignore_subresources: frozenset[str]
    verbs: frozenset[str] | None
    annotation: tuple[str, str] | None
    namespace_contains: str | None
    ignore_namespaces: frozenset[str]
    template: tuple[tuple[str, str | None], ...]
    line: int
    users: NameMatch | None = None
    ignore_users: NameMatch | None = None
    groups: NameMatch | None = None
    ignore_groups: NameMatch | None = None
    user_agents: tuple[str, ...] | None = None        # lower-cased; any of
    ignore_user_agents: tuple[str, ...] = ()          # lower-cased
    response: frozenset[str] | None = None            # success, denied, error
    gitops_managed: bool | None = None
    # True when any of users, groups, user agents or response is given: rules without
    # them skip those checks in one test.
    refined: bool = False

    def summary(self) -> str:
        """One line describing what the rule matches, for `validate`."""
        parts = []
        if self.resources:
            parts.append("resource=" + "|".join(sorted(self.resources)))
        if self.subresource:
            parts.append(f"subresource={self.subresource}")
        if self.ignore_subresources:
            parts.append("not-subresource=" + "|".join(sorted(self.ignore_subresources)))
        if self.verbs:
            parts.append("verb=" + "|".join(sorted(self.verbs)))
        if self.annotation:
            parts.append(f"annotation={self.annotation[0]}={self.annotation[1]}")
        if self.namespace_contains:
            parts.append(f"namespace~{self.namespace_contains}")
        if self.ignore_namespaces:
            parts.append("not-namespace=" + "|".join(sorted(self.ignore_namespaces)))
        for label, match in (("user", self.users), ("not-user", self.ignore_users),
                             ("group", self.groups), ("not-group", self.ignore_groups)):
            if match is not None:
                parts.append(f"{label}={match.text()}")
        if self.user_agents:
            parts.append("agent~" + "|".join(self.user_agents))
        if self.ignore_user_agents:
            parts.append("not-agent~" + "|".join(self.ignore_user_agents))
        if self.response:
            parts.append("response=" + "|".join(sorted(self.response)))
        if self.gitops_managed is not None:
            parts.append(f"gitops-managed={'yes' if self.gitops_managed else 'no'}")
        actors = "humans" if self.ignore_system else "all actors"
        state = "enabled " if self.enabled else "disabled"
        return (f"{state} {self.name:<26} {self.severity:<6} {self.workflow or '-':<9} "
                f"{actors:<10} {' '.join(parts) or 'any request'}")


@dataclass(frozen=True)
class RuleSet:
    """A validated rules file: every rule (enabled or not) and the global settings."""

    source: str
    rules: tuple[Rule, ...]
    ignore_namespaces: frozenset[str]
    warnings: tuple[str, ...] = field(default=())  # the first MAX_LISTED, in file order
    gitops: GitOps = DEFAULT_GITOPS
    warnings_total: int = 0  # all of them (0: as many as listed)

    @property
    def warning_count(self) -> int:
        """How many warnings the file drew, listed or not."""
        return max(self.warnings_total, len(self.warnings))

    def warning_lines(self) -> list[str]:
        """The listed warnings, then one line counting those not listed (if any)."""
        return _with_rest(self.warnings, self.warning_count, "warning")

    @property
    def enabled(self) -> tuple[Rule, ...]:
        """The rules that take part in detection."""
        return tuple(rule for rule in self.rules if rule.enabled)


def compile_template(text: str) -> tuple[tuple[str, str | None], ...]:
    """Split a description into (literal, token) pairs; unknown tokens stay literal."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for found in TOKEN_RE.finditer(text):
        if found.group(1) not in TOKENS:
            continue
        parts.append((text[pos:found.start()], found.group(1)))
        pos = found.end()
    parts.append((text[pos:], None))
    return tuple(parts)


# --- YAML with line numbers -------------------------------------------------------------

class _Listed:
    """The first MAX_LISTED texts in file order (line, then arrival), and a count of all.

    A bounded heap, so a file of a million problems costs memory for MAX_LISTED of them.
    """

    def __init__(self) -> None:
        self.total = 0
        self._heap: list[tuple[int, int, str]] = []  # (-line, -arrival, text): max on top

    def add(self, line: int, text: str) -> None:
        self.total += 1
        item = (-line, -self.total, text)
        if len(self._heap) < MAX_LISTED:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:  # earlier in the file than the last one kept
            heapq.heapreplace(self._heap, item)

    def first(self) -> list[str]:
        """The kept texts, in file order."""
        return [text for _, _, text in sorted(self._heap, reverse=True)]


class _Ctx:
    """Collects problems with the file name and the line of the node they concern."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._problems = _Listed()
        self._warnings = _Listed()

    def error(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = _line(node)
        self._problems.add(line, f"{self.source}:{line}: {where}: {message}")

    def warn(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = _line(node)
        self._warnings.add(line, f"{self.source}:{line}: {where}: {message}")

    @property
    def errors(self) -> int:
        """How many problems so far."""
        return self._problems.total

    @property
    def problems(self) -> list[str]:
        """The first MAX_LISTED problems, in file order."""
        return self._problems.first()

    @property
    def warnings(self) -> list[str]:
        """The first MAX_LISTED warnings, in file order."""
        return self._warnings.first()

    @property
    def warnings_total(self) -> int:
        """How many warnings in all."""
        return self._warnings.total


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    if node.tag == "tag:yaml.org,2002:bool":
        return "a boolean"
    if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return "a number"
    return "a string"


def _items(ctx: _Ctx, node: yaml.MappingNode, where: str,
           allowed: tuple[str, ...]) -> Iterator[tuple[str, yaml.Node]]:
    """Yield (key, value node) pairs, reporting unknown and duplicate keys."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            ctx.error(key_node, where, "keys must be plain names")
            continue
        if key in seen:
            ctx.error(key_node, f"{where}.{key}", "duplicate key")
            continue
        seen.add(key)
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            ctx.error(key_node, f"{where}.{key}",
                      f"unknown key{hint}; allowed: {', '.join(allowed)}")
            continue
        yield key, value_node


def _string(ctx: _Ctx, node: yaml.Node, where: str) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    hint = " (write a single value, or use the plural field for a list)" \
        if isinstance(node, yaml.SequenceNode) else ""
    ctx.error(node, where, f"expected a string, got {_kind(node)}{hint}")
    return None


def _string_list(ctx: _Ctx, node: yaml.Node, where: str) -> list[str] | None:
    if not isinstance(node, yaml.SequenceNode):
        hint = " (write it as a list: '- value')" if isinstance(node, yaml.ScalarNode) else ""
        ctx.error(node, where, f"expected a list of strings, got {_kind(node)}{hint}")
        return None
    values: list[str] = []
    for index, item in enumerate(node.value):
        value = _string(ctx, item, f"{where}[{index}]")
        if value is not None:
            if not value.strip():
                ctx.error(item, f"{where}[{index}]", "empty string")
            values.append(value)
    return values


def _bool(ctx: _Ctx, node: yaml.Node, where: str) -> bool | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return bool(_SCALARS.construct_yaml_bool(node))
    ctx.error(node, where, f"expected true or false, got {_kind(node)}")
    return None


def _int(ctx: _Ctx, node: yaml.Node, where: str) -> int | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        return int(_SCALARS.construct_yaml_int(node))
    ctx.error(node, where, f"expected a whole number, got {_kind(node)}")
    return None


# --- validation -------------------------------------------------------------------------

def _one_or_more(ctx: _Ctx, node: yaml.Node, where: str) -> list[str] | None:
    """A string or a list of strings (the match fields added to the old format take both)."""
    if isinstance(node, yaml.ScalarNode):
        value = _string(ctx, node, where)
        if value is not None and not value.strip():
            ctx.error(node, where, "empty string")
        return None if value is None else [value]
    return _string_list(ctx, node, where)


def _name_match(ctx: _Ctx, node: yaml.Node, where: str, *, include: bool) -> NameMatch | None:
    values = _one_or_more(ctx, node, where)
    if values is None:
        return None
    if include and not values:
        ctx.error(node, where, "an empty list matches nobody; leave the field out instead")
    exact: set[str] = set()
    prefixes: set[str] = set()
    for value in values:
        star = value.find("*")
        if star == -1:
            exact.add(value)
        elif star != len(value) - 1:
            ctx.error(node, where, f"{value!r}: '*' may only end a name (a prefix such as "
                      "'oidc:*')")
        elif len(value) == 1:
            ctx.error(node, where, "'*' alone matches everyone; leave the field out instead")
        else:
            prefixes.add(value[:-1])
    return NameMatch(frozenset(exact), tuple(sorted(prefixes)))


def _response(ctx: _Ctx, node: yaml.Node, where: str) -> frozenset[str] | None:
    classes = ", ".join(RESPONSE_CLASSES)
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        ctx.error(node, where, f"takes a class of response, not a code: one or more of "
                  f"{classes} (success is 1xx-3xx, denied is 401 and 403, error any other "
                  "4xx or 5xx)")
        return None
    values = _one_or_more(ctx, node, where)
    if values is None:
        return None
    for value in values:
        if value not in RESPONSE_CLASSES:
            ctx.error(node, where, f"{value!r} is not one of {classes}")
    if not values:
        ctx.error(node, where, "an empty list matches no response; leave the field out")
    return frozenset(values)


def _match_value(ctx: _Ctx, key: str, node: yaml.Node, where: str) -> Any:
    if key in _LIST_KEYS:
        return _string_list(ctx, node, where)
    if key in _NAME_KEYS:
        return _name_match(ctx, node, where, include=not key.startswith("ignore_"))
    if key in _AGENT_KEYS:
        agents = _one_or_more(ctx, node, where)
        return None if agents is None else tuple(agent.lower() for agent in agents)
    if key == "response":
        return _response(ctx, node, where)
    if key == "gitops_managed":
        return _bool(ctx, node, where)
    text = _string(ctx, node, where)
    if key == "annotation" and text is not None:
        akey, sep, aval = text.partition("=")
        if not sep or not akey.strip():
            ctx.error(node, where, f"expected \"key=value\", got {text!r}")
            return None
        return akey.strip(), aval.strip()
    return text


def _resource_hint(resource: str) -> str | None:
    """How to write a resource the apiserver would audit, or None when it looks right."""
    if "/" in resource:
        base, _, sub = resource.partition("/")
        return f"write resource: {base} and subresource: {sub}"
    lower = resource.lower()
    fix = _RESOURCE_FIXES.get(lower)
    if fix is not None:
        return f"the apiserver writes the plural, lower-case name (did you mean {fix!r}?)"
    if lower != resource:
        return f"resource names are lower case (did you mean {lower!r}?)"
    return None


def _verb_hint(verb: str) -> str:
    lower = verb.lower()
    if lower in KNOWN_VERBS:
        return f" (verbs are lower case: {lower!r})"
    if lower in _SUBRESOURCE_VERBS:
        sub = _SUBRESOURCE_FIXES.get(lower, lower)
        return (f" ({verb!r} is a subresource: write subresource: {sub} and leave the verb "
                "out; kubectl sends it as get, or create from older clients)")
    if lower == "connect":
        return (" (exec, attach and port-forward are audited as get, or create from older "
                "kubectl: leave the verb out)")
    close = difflib.get_close_matches(lower, sorted(KNOWN_VERBS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _warn_unaudited(ctx: _Ctx, key: str, node: yaml.Node, where: str, got: Any) -> None:
    """Warn about resources, subresources and verbs the apiserver never writes."""
    if got is None or key not in ("resource", "resources", "subresource",
                                  "ignore_subresources", "verb", "verbs"):
        return
    for value in [got] if isinstance(got, str) else got:
        if key in ("resource", "resources"):
            hint = _resource_hint(value)
            if hint is not None:
                ctx.warn(node, where, f"resource {value!r} is never audited: {hint}")
        elif key in ("verb", "verbs"):
            if value not in KNOWN_VERBS:
                ctx.warn(node, where, f"verb {value!r} is not one the apiserver audits"
                         + _verb_hint(value))
            elif value in NAMELESS_VERBS:
                ctx.warn(node, where, f"verb {value!r}: such requests name no object, so "
                         "they are never charged to an entity (skipped as no_name)")
        else:
            fix = _SUBRESOURCE_FIXES.get(value.lower(), value.lower())
            if fix != value:
                ctx.warn(node, where, f"subresource {value!r} is never audited: the "
                         f"apiserver writes {fix!r}")


def _parse_match(ctx: _Ctx, node: yaml.Node, where: str) -> dict[str, Any] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a mapping of conditions, got {_kind(node)}")
        return None
    out: dict[str, Any] = {}
    for key, value in _items(ctx, node, where, MATCH_KEYS):
        path = f"{where}.{key}"
        out[key] = _match_value(ctx, key, value, path)
        _warn_unaudited(ctx, key, value, path, out[key])
    if not node.value:
        ctx.error(node, where, "needs at least one condition (an empty match fires on "
                  "every request)")
    return out


def _warn_sessions(ctx: _Ctx, node: yaml.Node | None, where: str, rule: Rule) -> None:
    """Warn when a rule on pod writes also counts exec, attach and port-forward sessions.

    Older kubectl sends them as `create` on pods/exec, pods/attach and pods/portforward,
    so a rule on `create` of pods without a subresource fires on each of them too. That
    is what the old agent's config-drift did, and an unchanged file keeps doing it.
    """
    if rule.resources is None or "pods" not in rule.resources or rule.subresource \
            or rule.verbs is None or "create" not in rule.verbs:
        return
    missing = [sub for sub in SESSION_SUBRESOURCES if sub not in rule.ignore_subresources]
    if not missing:
        return
    spoken = {"exec": "exec", "attach": "attach", "portforward": "port-forward"}
    names = [spoken[sub] for sub in missing]
    sessions = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    fix = ", ".join([*sorted(rule.ignore_subresources), *missing])
    ctx.warn(node, f"{where}.match", f"also fires on every kubectl {sessions} that older "
             "kubectl sends as 'create' on pods (as the old agent did; an unchanged file "
             f"keeps that); to count only changes to pods, add under match: "
             f"ignore_subresources: [{fix}]")


def _warn_unreachable_users(ctx: _Ctx, node: yaml.Node | None, where: str,
                            rule: Rule) -> None:
    """Warn when `users` names only internal identities that ignore_system skips."""
    users = rule.users
    if not rule.ignore_system or users is None or not (users.exact or users.prefixes):
        return
    names = [*users.exact, *users.prefixes]
    if all(name.startswith("system:") and name not in HUMAN_SYSTEM_USERS for name in names):
        ctx.warn(node, f"{where}.match.users", "names only internal identities, which "
                 "ignore_system: true skips: the rule never fires (set ignore_system: false)")


def _parse_rule(ctx: _Ctx, index: int, node: yaml.Node) -> Rule | None:
    where = f"rules[{index}]"
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a rule (a mapping), got {_kind(node)}")
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == "name" and isinstance(value_node, yaml.ScalarNode):
            where = f"rules[{index}] ({value_node.value})"
    before = ctx.errors
    got: dict[str, Any] = {}
    for key, value in _items(ctx, node, where, RULE_KEYS):
        path = f"{where}.{key}"
        if key in ("name", "description", "severity", "workflow"):
            got[key] = _string(ctx, value, path)
        elif key in ("ignore_system", "enabled"):
            got[key] = _bool(ctx, value, path)
        elif key == "points":
            got[key] = _int(ctx, value, path)
            if got[key] is not None and not 1 <= got[key] <= 100:
                ctx.error(value, path, f"must be between 1 and 100, got {got[key]}")
        else:
            got[key] = _parse_match(ctx, value, path)
        got[f"_{key}_node"] = value
    _check_rule_fields(ctx, node, where, got)
    if ctx.errors > before:
        return None
    rule = _build_rule(got, _line(node))
    _warn_sessions(ctx, got.get("_match_node"), where, rule)
    _warn_unreachable_users(ctx, got.get("_match_node"), where, rule)
    return rule


def _check_rule_fields(ctx: _Ctx, node: yaml.Node, where: str, got: dict[str, Any]) -> None:
    """Report missing and out-of-contract rule fields; warn about unknown tokens."""
    name = got.get("name")
    if "name" not in got:
        ctx.error(node, where, "missing 'name'")
    elif name is not None and not (TYPE_LENGTH[0] <= len(name) <= TYPE_LENGTH[1]
                                   and NAME_RE.match(name)):
        ctx.error(got["_name_node"], f"{where}.name",
                  f"{name!r} is not a name the backend accepts: 3-50 characters of a-z, 0-9 "
                  "and '-', starting and ending with a letter or digit")
    severity = got.get("severity")
    if "severity" not in got:
        ctx.error(node, where, "missing 'severity' (high, medium or low)")
    elif severity is not None and severity not in SEVERITIES:
        ctx.error(got["_severity_node"], f"{where}.severity",
                  f"{severity!r} is not one of high, medium, low")
    workflow = got.get("workflow")
    if workflow is not None and not 1 <= len(workflow) <= 200:
        ctx.error(got["_workflow_node"], f"{where}.workflow", "must be 1-200 characters")
    if "match" not in got:
        ctx.error(node, where, "missing 'match' (the conditions the rule fires on)")
    description = got.get("description") or DEFAULT_DESCRIPTION
    for token in TOKEN_RE.findall(description):
        if token not in TOKENS:
            ctx.warn(got.get("_description_node"), f"{where}.description",
                     f"unknown token {{{token}}} is printed as is; known: "
                     + " ".join("{" + t + "}" for t in TOKENS))


def _build_rule(got: dict[str, Any], line: int) -> Rule:
    match = got["match"] or {}
    resources = set(match.get("resources") or ())
    if match.get("resource"):
        resources.add(match["resource"])
    verbs = set(match.get("verbs") or ())
    if match.get("verb"):
        verbs.add(match["verb"])
    contains = match.get("namespace_contains")
    description = got.get("description") or DEFAULT_DESCRIPTION
    return Rule(
        name=str(got["name"]),
        description=description,
        severity=str(got["severity"]),
        workflow=got.get("workflow"),
        ignore_system=bool(got.get("ignore_system", False)),
        enabled=got.get("enabled", True) is not False,
        points=got.get("points"),
        resources=frozenset(resources) or None,
        subresource=match.get("subresource") or None,
        ignore_subresources=frozenset(match.get("ignore_subresources") or ()),
        verbs=frozenset(verbs) or None,
        annotation=match.get("annotation"),
        namespace_contains=contains.lower() if contains else None,
        ignore_namespaces=frozenset(match.get("ignore_namespaces") or ()),
        template=compile_template(description),
        line=line,
        users=match.get("users"),
        ignore_users=match.get("ignore_users"),
        groups=match.get("groups"),
        ignore_groups=match.get("ignore_groups"),
        user_agents=match.get("user_agent_contains"),
        ignore_user_agents=match.get("ignore_user_agent_contains") or (),
        response=match.get("response"),
        gitops_managed=match.get("gitops_managed"),
        refined=any(match.get(key) is not None for key in (*_NAME_KEYS, *_AGENT_KEYS,
                                                             "response")),
    )


def _parse_gitops(ctx: _Ctx, node: yaml.Node) -> GitOps:
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, "config.gitops", f"expected a mapping with {', '.join(GITOPS_KEYS)}, "
                  f"got {_kind(node)}")
        return DEFAULT_GITOPS
    got: dict[str, Any] = {}
    for key, value in _items(ctx, node, "config.gitops", GITOPS_KEYS):
        path = f"config.gitops.{key}"
        if key == "controllers":
            got[key] = _name_match(ctx, value, path, include=False)
            continue
        got[key] = _string_list(ctx, value, path)
        if key == "labels" and "app.kubernetes.io/instance" in (got[key] or ()):
            ctx.warn(value, path, "app.kubernetes.io/instance is set by Helm and others too: "
                     "it does not show that a GitOps tool manages the object")
    default = DEFAULT_GITOPS
    annotations, labels = got.get("annotations"), got.get("labels")
    managers, controllers = got.get("field_managers"), got.get("controllers")
    return GitOps(
        annotations=default.annotations if annotations is None else tuple(annotations),
        labels=default.labels if labels is None else tuple(labels),
        field_managers=default.field_managers if managers is None else frozenset(managers),
        controllers=default.controllers if controllers is None else controllers,
    )


def _parse_config(ctx: _Ctx, node: yaml.Node) -> tuple[list[str], GitOps]:
    ignore: list[str] = []
    gitops = DEFAULT_GITOPS
    if isinstance(node, yaml.MappingNode):
        for key, value in _items(ctx, node, "config", CONFIG_KEYS):
            if key == "ignore_namespaces":
                ignore = _string_list(ctx, value, f"config.{key}") or []
            else:
                gitops = _parse_gitops(ctx, value)
    elif not (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        ctx.error(node, "config", f"expected a mapping, got {_kind(node)}")
    return ignore, gitops


def _parse_rule_list(ctx: _Ctx, rules_node: yaml.Node,
                     superseded: Callable[[], bool] | None = None) -> list[Rule]:
    if not isinstance(rules_node, yaml.SequenceNode):
        ctx.error(rules_node, "rules", f"expected a list of rules, got {_kind(rules_node)}")
        return []
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, rule_node in enumerate(rules_node.value):
        if superseded is not None and index % CHECK_RULES == 0 and superseded():
            raise Superseded
        rule = _parse_rule(ctx, index, rule_node)
        if rule is None:
            continue
        if rule.name in names:
            ctx.error(rule_node, f"rules[{index}] ({rule.name}).name",
                      f"duplicate name; first used by rules[{names[rule.name]}]")
            continue
        names[rule.name] = index
        rules.append(rule)
    if not rules_node.value:
        ctx.warn(rules_node, "rules", "the list is empty: nothing will be detected")
    return rules


class _CheckedLoader(_BASE_LOADER):  # type: ignore[misc]
    """The loader, looking every CHECK_NODES nodes whether the load was superseded.

    libyaml's composer calls `resolve` for each node it builds, so raising Superseded
    there abandons even the composition of a huge file within milliseconds.
    """

    superseded: Callable[[], bool] = staticmethod(lambda: False)
    _until_check = CHECK_NODES

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        self._until_check -= 1
        if not self._until_check:
            self._until_check = CHECK_NODES
            if self.superseded():
                raise Superseded
        return _BASE_RESOLVE(self, kind, value, implicit)


_BASE_RESOLVE = _BASE_LOADER.resolve


def _compose_text(text: str, superseded: Callable[[], bool] | None) -> Any:
    if superseded is None:
        return yaml.compose(text, Loader=_BASE_LOADER)
    loader = _CheckedLoader(text)
    loader.superseded = superseded
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _compose(text: str, source: str,
             superseded: Callable[[], bool] | None = None) -> yaml.MappingNode:
    if len(text) > MAX_RULES_BYTES:
        raise RulesError(source, [f"{source}: larger than {MAX_RULES_BYTES} bytes"])
    try:
        root = _compose_text(text, superseded)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1"
        raise RulesError(source, [f"{source}:{place}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise RulesError(source, [f"{source}: invalid YAML: {exc}"]) from exc
    if root is None:
        raise RulesError(source, [f"{source}:1: the file is empty; it needs a 'rules' list"])
    if not isinstance(root, yaml.MappingNode):
        raise RulesError(source, [f"{source}:{_line(root)}: expected a mapping with 'config' "
                                  f"and 'rules', got {_kind(root)}"])
    return root


def parse_rules(text: str, source: str = "rules.yaml",
                superseded: Callable[[], bool] | None = None) -> RuleSet:
    """Validate rules text and compile it; raise RulesError listing the first problems
    (MAX_LISTED) and counting all. With `superseded`, raise Superseded as soon as it
    says a newer version of the file is waiting (it is asked every few thousand nodes)."""
    ctx = _Ctx(source)
    root = _compose(text, source, superseded)
    ignore: list[str] = []
    gitops = DEFAULT_GITOPS
    rules: list[Rule] = []
    seen_rules = False
    for key, value in _items(ctx, root, "top level", TOP_KEYS):
        if key == "config":
            ignore, gitops = _parse_config(ctx, value)
        else:
            seen_rules = True
            rules = _parse_rule_list(ctx, value, superseded)
    if not seen_rules:
        ctx.error(root, "top level", "missing 'rules' (the list of detection rules)")
    if ctx.errors:
        raise RulesError(source, ctx.problems, ctx.errors)
    return RuleSet(source=source, rules=tuple(rules), ignore_namespaces=frozenset(ignore),
                   warnings=tuple(ctx.warnings), gitops=gitops,
                   warnings_total=ctx.warnings_total)


def default_rules_text() -> str:
    """The rules shipped inside the package (a copy of the repository's rules.yaml)."""
    return resources.files("healert_webhook").joinpath("default_rules.yaml").read_text("utf-8")


def load_rules(path: Path | None, superseded: Callable[[], bool] | None = None) -> RuleSet:
    """Read and compile a rules file (None: the packaged default rules); see
    `parse_rules` for `superseded`. Raises RulesError."""
    if path is None:
        return parse_rules(default_rules_text(), "<packaged rules.yaml>")
    source = str(path)
    try:
        raw = read_regular(path, MAX_RULES_BYTES)  # a FIFO at the path never blocks us
    except NotRegularFile as exc:
        raise RulesError(source, [f"{source}: {exc.strerror}"]) from exc
    except OSError as exc:
        raise RulesError(source, [f"{source}: cannot read: {exc.strerror}"]) from exc
    if len(raw) > MAX_RULES_BYTES:
        raise RulesError(source, [f"{source}: larger than {MAX_RULES_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(source, [f"{source}: not UTF-8 (byte {exc.start})"]) from exc
    return parse_rules(text, source, superseded)
