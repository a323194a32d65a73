"""Check a policy against what detection needs: every starved rule, secret and bad key.

A policy cannot be asked about every request there is; it is asked about enough of them
to see every rule that can decide. For each detection rule's targets, every resource,
subresource and verb it can match (for "any resource": every built-in resource, every
resource the policy names and one custom resource) is asked as made by each actor the
detection rule must see:

- a person: an ordinary one (`alice`), and the people and groups the policy names;
- a person acting `--as` someone: the same people (the policy sees them, not whom they
  act as);
- a person through an access proxy: each proxy named in the needs, else an unnamed one
  (`system:serviceaccount:access-proxy:access-proxy`);
- Kubernetes' own actors, for rules that count them: a controller in kube-system, an
  operator's service account, a node, the controller manager, and the system users the
  policy names.

Which requests: one with values no policy rule names (an ordinary person, namespace and
object name), and for each policy rule that can match the resource, requests built from
the values that rule names (its users or groups, namespaces, object names), ordinary
values elsewhere. Any request is decided like one of these: if rule k decides it, the
one built from rule k's values where they matter and unnamed values elsewhere escapes
every earlier rule just as it does. So no starved request is missed, and the work grows
with the number of policy rules, not with the product of the values they name.

A request is starved when the deciding policy rule gives a lower level than needed,
omits every stage detection fires on (or, for exec, attach and port-forward sessions,
ResponseStarted: the session is then seen only when it ends), or omits managed fields a
rule reads. Secrets and the like are never needed above Metadata (see `builtin.CAPPED`).
A custom resource whose group the needs do not give is taken to be in whichever group
the policy names it in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import product

from healert_webhook.audit import is_internal_actor
from healert_webhook.auditpolicy import builtin
from healert_webhook.auditpolicy.document import (
    Level,
    Policy,
    PolicyDocument,
    PolicyRule,
    ProblemKind,
    parse_policy,
)
from healert_webhook.auditpolicy.evaluate import Decision, Identity, Request, evaluate
from healert_webhook.auditpolicy.needs import ANY, Actor, Need, Needs, Target

AUTHENTICATED = "system:authenticated"
SERVICE_ACCOUNTS = "system:serviceaccounts"
SOMEONE = Identity("bob", (AUTHENTICATED,))  # whom `--as` requests act as
UNNAMED_PROXY = "system:serviceaccount:access-proxy:access-proxy"
SYSTEM_USERS = ("system:serviceaccount:kube-system:deployment-controller",
                "system:serviceaccount:operators:operator", "system:node:node-1",
                "system:kube-controller-manager")
# Groups no person is in: a policy rule on them never decides a person's request.
_NOT_PEOPLE = ("system:serviceaccounts", "system:nodes", "system:unauthenticated")
CUSTOM = ("example.com", "widgets")  # a custom resource no policy knows about
PERSON, NAMESPACE, NAME = "alice", "payments", "payments-api"
NAMELESS_VERBS = frozenset({"list", "watch", "deletecollection"})
DETECTED_STAGES = frozenset({"ResponseStarted", "ResponseComplete"})
EXAMPLES = 3


class FindingKind(StrEnum):
    """What is wrong."""

    REFUSED = "refused"    # the apiserver would not start with the policy
    IGNORED = "ignored"    # a key the apiserver ignores
    STARVED = "starved"    # a detection rule does not get what it needs
    EXPOSURE = "exposure"  # secret values would be written to the audit trail


@dataclass(frozen=True)
class Finding:
    """One thing `check` found, in words an operator acts on."""

    kind: FindingKind
    message: str
    policy_rule: int | None = None     # the deciding policy rule, counted from 1
    detection_rule: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Persona:
    """Someone a request is asked as: who authenticates, and for whom."""

    actor: Actor
    user: Identity
    label: str
    impersonated: Identity | None = None


def exit_status(findings: Iterable[Finding]) -> int:
    """The exit status of `policy --check`: 1 when anything was found, else 0."""
    return 1 if any(True for _ in findings) else 0


def check(policy: str | PolicyDocument, needs: Needs) -> list[Finding]:
    """Every problem of the document, every need it starves, every secret it logs."""
    doc = parse_policy(policy) if isinstance(policy, str) else policy
    findings = [Finding(FindingKind.REFUSED if p.kind is ProblemKind.REFUSED
                        else FindingKind.IGNORED, str(p), p.rule) for p in doc.problems]
    if doc.policy is None:
        return findings
    return findings + _starved(doc.policy, needs) + _exposed(doc.policy, needs)


# --- the policy rules one resource can meet ---------------------------------------------

class _View:
    """The policy rules that can match requests for one resource, with their numbers.

    Asking only these gives the same decision as asking the whole policy, faster, and
    only the values they name can change that decision.
    """

    def __init__(self, policy: Policy, pairs: Iterable[tuple[str, str]]) -> None:
        wanted = set(pairs)
        chosen = [(number, rule) for number, rule in enumerate(policy.rules, start=1)
                  if any(_can_match(rule, group, resource) for group, resource in wanted)]
        self.numbers = tuple(number for number, _ in chosen)
        self.rules = [rule for _, rule in chosen]
        self.policy = replace(policy, rules=tuple(self.rules))
        self.whole = policy
        self.users = {user for rule in self.rules for user in rule.users}
        self.namespaces = {ns for rule in self.rules for ns in rule.namespaces}
        self.names = {name for rule in self.rules for entry in rule.resources
                      for name in entry.resource_names}

    def evaluate(self, request: Request) -> Decision:
        """The whole policy's decision for a request on this view's resource."""
        decision = evaluate(self.policy, request)
        if decision.rule is None:
            return decision
        return replace(decision, rule=self.numbers[decision.rule - 1])


def _can_match(rule: PolicyRule, group: str, resource: str) -> bool:
    """Whether the rule can match some request for this resource, whoever makes it."""
    if rule.non_resource_urls and not rule.resources and not rule.namespaces:
        return False
    return not rule.resources or any(
        entry.group in (group, "*") and (not entry.resources or any(
            spec.partition("/")[0] in (resource, "*") for spec in entry.resources))
        for entry in rule.resources)


def _fresh(base: str, taken: set[str]) -> str:
    """`base`, or `base-2`, `base-3`...: the first that no policy rule names."""
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


# --- who asks ---------------------------------------------------------------------------

def _identity(user: str, *extra: str) -> Identity:
    """A user with the groups the apiserver gives such a name, and `extra` ones."""
    parts = user.split(":")
    groups = [*extra, AUTHENTICATED]
    if user.startswith("system:serviceaccount:") and len(parts) == 4:
        groups += [SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{parts[2]}"]
    elif user.startswith("system:node:"):
        groups.append("system:nodes")
    return Identity(user, tuple(dict.fromkeys(groups)))


def _person_group(group: str) -> bool:
    return not any(group == g or group.startswith(f"{g}:") for g in _NOT_PEOPLE)


def _personas(actor: Actor, view: _View, needs: Needs,
              rule: PolicyRule | None) -> list[Persona]:
    """Who to ask as: ordinary ones for `rule` None, else those `rule` names."""
    if actor in (Actor.PERSON, Actor.IMPERSONATING):
        people = _people(view, rule)
        if actor is Actor.PERSON:
            return [Persona(actor, who, label) for who, label in people]
        return [Persona(actor, who, f"a person acting --as someone ({who.name})", SOMEONE)
                for who, _ in people]
    if actor is Actor.PROXIED:
        return [Persona(actor, _identity(proxy), f"a person through an access proxy ({proxy})",
                        Identity(PERSON, (AUTHENTICATED,)))
                for proxy in sorted(set(needs.proxies)) or [UNNAMED_PROXY]]
    return [Persona(actor, who, f"Kubernetes' own {who.name}") for who in _system(rule)]


def _system(rule: PolicyRule | None) -> list[Identity]:
    """Kubernetes' own identities: the usual ones, or those `rule` names."""
    if rule is None or not (rule.users or rule.user_groups):
        return [_identity(user) for user in SYSTEM_USERS]
    names: list[str | None] = [u for u in rule.users if is_internal_actor(u)] or [None]
    if rule.users and names == [None]:
        return []
    groups: list[str | None] = list(rule.user_groups) or [None]
    return [_identity(name or _member_of(group), *([group] if group else []))
            for name, group in product(names, groups)]


def _member_of(group: str | None) -> str:
    """An internal user the apiserver would put in `group`."""
    if group and group.startswith(f"{SERVICE_ACCOUNTS}:"):
        return f"system:serviceaccount:{group.removeprefix(SERVICE_ACCOUNTS + ':')}:someone"
    return {SERVICE_ACCOUNTS: "system:serviceaccount:operators:operator",
            "system:nodes": "system:node:node-1"}.get(group or "", "system:someone")


def _people(view: _View, rule: PolicyRule | None) -> list[tuple[Identity, str]]:
    ordinary = _fresh(PERSON, view.users)
    if rule is None or not (rule.users or rule.user_groups):
        return [(Identity(ordinary, (AUTHENTICATED,)), "a person")]
    groups: list[str | None] = [g for g in rule.user_groups if _person_group(g)] or [None]
    if rule.user_groups and groups == [None]:
        return []  # a rule for service accounts or nodes: no person reaches it
    names: list[str | None] = [u for u in rule.users if not is_internal_actor(u)] or [None]
    if rule.users and names == [None]:
        return []
    out = []
    for name, group in product(names, groups):
        who = _identity(name or ordinary, *([group] if group else []))
        label = (f"a person ({name})" if name else "a person") + (
            f" in group {group}" if group else "")
        out.append((who, label))
    return out


# --- what to ask ------------------------------------------------------------------------

def _resources(policy: Policy, target: Target) -> list[list[tuple[str, str]]]:
    """(group, resource) to ask about; each inner list holds the groups one may live in."""
    if target.resource != ANY:
        groups = target.groups()
        if groups is not None:
            return [[(group, target.resource)] for group in groups]
        named = sorted({entry.group for rule in policy.rules for entry in rule.resources
                        if entry.group != "*" and any(spec.partition("/")[0] == target.resource
                                                      for spec in entry.resources)})
        return [[(group, target.resource) for group in named or [CUSTOM[0]]]]
    found = {(res.group, res.name) for res in builtin.BUILTIN} | {CUSTOM}
    for rule in policy.rules:
        for entry in rule.resources:
            if entry.group != "*":
                found |= {(entry.group, spec.partition("/")[0]) for spec in entry.resources
                          if not spec.startswith("*")}
    return [[pair] for pair in sorted(found - set(builtin.NOISE))]


def _subresources(policy: Policy, target: Target, group: str, resource: str) -> list[str]:
    if target.subresources is not None:
        return sorted(target.subresources)
    found = {"", *builtin.subresources(group, resource)}
    for rule in policy.rules:
        for entry in rule.resources:
            for spec in entry.resources:
                base, _, sub = spec.partition("/")
                if base == resource and sub and sub != "*":
                    found.add(sub)
    return sorted(found - target.excluded_subresources)


@dataclass(frozen=True)
class _Ask:
    """One request to put to the policy, and who makes it."""

    persona: Persona
    requests: tuple[Request, ...]  # the same request in each group it may live in


def _asks(view: _View, need: Need | None, actor: Actor, needs: Needs, *,
          alternatives: list[tuple[str, str]], sub: str, verb: str) -> Iterator[_Ask]:
    """The requests that reach each policy rule that can decide (see the module doc)."""
    seen: set[tuple[object, ...]] = set()
    for rule in [None, *view.rules]:
        for persona in _personas(actor, view, needs, rule):
            for namespace, name in _places(view, need, rule, alternatives[0],
                                           sub=sub, verb=verb):
                key = (persona.user, namespace, name)
                if key in seen:
                    continue
                seen.add(key)
                yield _Ask(persona, tuple(
                    Request(verb, persona.user, persona.impersonated, group, resource, sub,
                            namespace, name) for group, resource in alternatives))


def _places(view: _View, need: Need | None, rule: PolicyRule | None,
            pair: tuple[str, str], *, sub: str, verb: str) -> list[tuple[str, str]]:
    """(namespace, object name) pairs: ordinary ones, or those `rule` names."""
    group, resource = pair
    nameless = verb in NAMELESS_VERBS or (verb == "create" and not sub)
    ordinary_name = _fresh(NAME, view.names | view.namespaces)
    names = [""] if nameless else [ordinary_name]
    if rule is not None and not nameless:
        names = sorted({n for entry in rule.resources for n in entry.resource_names}) or names
    if resource == "namespaces" and group == "":
        # A Namespace addressed by name has its own name as namespace.
        if not nameless and rule is not None and rule.namespaces:
            named = set(rule.namespaces) - {""}
            names = sorted(named & set(names) if names != [ordinary_name] else named)
        places = [(name, name) for name in names]
    elif not builtin.is_namespaced(group, resource):
        places = [("", name) for name in names]
    else:
        contains = need.namespace_contains.lower() if need else ""
        spaces = [_fresh(contains or NAMESPACE, view.namespaces)]
        if verb in NAMELESS_VERBS:
            spaces.append("")  # across every namespace
        if rule is not None and rule.namespaces:
            spaces = sorted(set(rule.namespaces))
        places = [(ns, name) for ns in spaces for name in names]
    if need is None:
        return places
    return [(ns, name) for ns, name in places if need.counts_namespace(ns)]


# --- needs --------------------------------------------------------------------------------

@dataclass
class _Group:
    """Starved requests sharing one cause, with a few examples."""

    need: Need
    persona: Persona
    cause: str
    decision: Decision
    examples: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


_Groups = dict[tuple[str, Actor, str, int | None, Level], _Group]


def _starved(policy: Policy, needs: Needs) -> list[Finding]:
    groups: _Groups = {}
    for need in needs.needs:
        for target in need.targets:
            for alternatives in _resources(policy, target):
                view = _View(policy, alternatives)
                for actor in (actor for actor in Actor if actor in need.actors):
                    _check_target(view, need, target, actor, needs=needs,
                                  alternatives=alternatives, groups=groups)
    return [_starved_finding(group) for group in groups.values()]


def _check_target(view: _View, need: Need, target: Target, actor: Actor, *, needs: Needs,
                  alternatives: list[tuple[str, str]], groups: _Groups) -> None:
    group, resource = alternatives[0]
    for sub in _subresources(view.whole, target, group, resource):
        possible = builtin.verbs(group, resource, sub)
        for verb in [v for v in possible if not target.verbs or v in target.verbs]:
            for ask in _asks(view, need, actor, needs, alternatives=alternatives, sub=sub,
                             verb=verb):
                _record(view, need, ask, groups)


def _record(view: _View, need: Need, ask: _Ask, groups: _Groups) -> None:
    """Judge one request (asked in each group it may live in: one satisfied is enough)."""
    shortfalls = []
    for request in ask.requests:
        decision = view.evaluate(request)
        cause = _shortfall(need, request, decision)
        if cause is None:
            return
        shortfalls.append((cause, decision, request))
    cause, decision, request = shortfalls[0]
    key = (need.rule, ask.persona.actor, cause, decision.rule, decision.level)
    group = groups.setdefault(key, _Group(need, ask.persona, cause, decision))
    example = _describe(request, view)
    if example not in group.seen:
        group.seen.add(example)
        # Examples of different resources say more than one resource's verbs.
        shown = {text.split(" ")[1] for text in group.examples}
        if len(group.examples) < EXAMPLES and example.split(" ")[1] not in shown:
            group.examples.append(example)


def _shortfall(need: Need, request: Request, decision: Decision) -> str | None:
    """Why the decision starves the need ("level", "stages", "late", "fields"), or None."""
    wanted = need.level
    if builtin.is_capped(request.api_group, request.resource, request.subresource):
        wanted = min(wanted, Level.METADATA)
    if decision.level < wanted:
        return "level"
    written = decision.stages(request)
    if not written & DETECTED_STAGES:
        return "stages"
    if request.long_running and "ResponseStarted" not in written:
        return "late"
    if need.managed_fields and decision.level >= Level.REQUEST and decision.omit_managed_fields:
        return "fields"
    return None


def _starved_finding(group: _Group) -> Finding:
    need, decision = group.need, group.decision
    more = len(group.seen) - len(group.examples)
    what = ", ".join(f"`{example}`" for example in group.examples)
    if more > 0:
        what += f" and {more} more request{'s' if more > 1 else ''}"
    rule = f"policy rule {decision.rule}" if decision.rule else "no policy rule"
    why = {
        "level": (f"{rule} gives {decision.level.text}" if decision.rule
                  else "no policy rule matches, so nothing is recorded"),
        "stages": f"{rule} omits the stages it fires on (ResponseStarted, ResponseComplete)",
        "late": f"{rule} omits ResponseStarted, so a session is seen only when it ends",
        "fields": f"{rule} omits managedFields, which it reads",
    }[group.cause]
    reason = f" ({need.reason})" if need.reason else ""
    message = (f"{need.rule} needs {need.level.text}{reason} for {what} by "
               f"{group.persona.label}; {why}")
    return Finding(FindingKind.STARVED, message, decision.rule, need.rule)


def _describe(request: Request, view: _View) -> str:
    resource = request.resource
    if len(builtin.lookup(resource)) != 1:
        resource += f".{request.api_group}" if request.api_group else " (core)"
    if request.subresource:
        resource += f"/{request.subresource}"
    text = f"{request.verb} {resource}"
    if request.namespace and request.namespace in view.namespaces:
        text += f" in {request.namespace}"
    if request.name and request.name in view.names:
        text += f" named {request.name}"
    return text


# --- secrets ------------------------------------------------------------------------------

def _exposed(policy: Policy, needs: Needs) -> list[Finding]:
    """Each policy rule that writes a Secret's, a token's or a review's body."""
    found: dict[int, list[str]] = {}
    levels: dict[int, Level] = {}
    whom: dict[int, str] = {}
    for group, combined in sorted(builtin.SECRET_MATERIAL):
        resource, _, sub = combined.partition("/")
        view = _View(policy, [(group, resource)])
        for actor in Actor:
            for verb in builtin.verbs(group, resource, sub):
                for ask in _asks(view, None, actor, needs, alternatives=[(group, resource)],
                                 sub=sub, verb=verb):
                    decision = view.evaluate(ask.requests[0])
                    if decision.level > Level.METADATA and decision.rule is not None:
                        examples = found.setdefault(decision.rule, [])
                        levels[decision.rule] = decision.level
                        whom.setdefault(decision.rule, ask.persona.label)
                        text = _describe(ask.requests[0], view)
                        if text not in examples:
                            examples.append(text)
    return [Finding(FindingKind.EXPOSURE,
                    _secret_message(rule, levels[rule], examples, whom[rule]), rule)
            for rule, examples in sorted(found.items())]


def _secret_message(rule: int, level: Level, examples: list[str], whom: str) -> str:
    shown = ", ".join(f"`{e}`" for e in examples[:EXAMPLES])
    more = len(examples) - EXAMPLES
    if more > 0:
        shown += f" and {more} more request{'s' if more > 1 else ''}"
    return (f"policy rule {rule} writes secret values to the audit trail: {level.text} for "
            f"{shown} by {whom} (Secrets, token requests and token reviews must stay at "
            "Metadata)")
