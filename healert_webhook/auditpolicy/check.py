"""Check a policy against what detection needs: every starved rule, secret and bad key.

A policy cannot be checked for every request there is, so it is checked for the
requests that tell its rules apart. For each detection rule's targets: every resource,
subresource and verb it can match (for "any resource", every built-in resource, every
resource the policy names and a custom one), and, from the policy rules that can match
that resource, the users, groups, namespaces and object names they name, next to an
ordinary person, namespace and name. Each request is asked of the policy as made by each
actor the detection rule must see:

- a person: `alice`, `system:admin` (in system:masters), and the people and groups the
  policy names;
- a person acting `--as` someone: the same people (the policy sees them, not whom they
  act as);
- a person through an access proxy: each proxy named in the needs, else an unnamed one
  (`system:serviceaccount:access-proxy:access-proxy`);
- Kubernetes' own actors, for rules that count them: a controller in kube-system, an
  operator's service account, a node, the controller manager, and the system users the
  policy names.

A request is starved when the deciding policy rule gives a lower level than needed,
omits every stage detection fires on (or, for exec, attach and port-forward sessions,
ResponseStarted: the session is then seen only when it ends), or omits managed fields a
rule reads. Secrets and the like are never needed above Metadata (see `builtin.CAPPED`).
A custom resource whose group the needs do not give is taken to be in whichever group
the policy names it in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

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
PERSON = Identity("alice", (AUTHENTICATED,))
ADMIN = Identity("system:admin", ("system:masters", AUTHENTICATED))
SOMEONE = Identity("bob", (AUTHENTICATED,))
UNNAMED_PROXY = "system:serviceaccount:access-proxy:access-proxy"
SYSTEM_USERS = ("system:serviceaccount:kube-system:deployment-controller",
                "system:serviceaccount:operators:operator", "system:node:node-1",
                "system:kube-controller-manager")
CUSTOM = ("example.com", "widgets")  # a custom resource no policy knows about
NAMESPACE, NAME = "payments", "payments-api"
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
    """Someone a request is asked as: who authenticates and for whom."""

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
    return findings + _starved(doc.policy, needs) + _secrets(doc.policy, needs)


# --- needs ----------------------------------------------------------------------------

@dataclass
class _Group:
    """Starved requests sharing one cause, with a few examples."""

    need: Need
    persona: Persona
    cause: str
    decision: Decision
    examples: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def _starved(policy: Policy, needs: Needs) -> list[Finding]:
    groups: dict[tuple[str, Actor, str, int | None, Level], _Group] = {}
    for need in needs.needs:
        for actor in (actor for actor in Actor if actor in need.actors):
            for persona in _personas(actor, policy, needs):
                for target in need.targets:
                    _check_target(policy, need, target, persona, groups)
    return [_starved_finding(group) for group in groups.values()]


def _check_target(policy: Policy, need: Need, target: Target, persona: Persona,
                  groups: dict[tuple[str, Actor, str, int | None, Level], _Group]) -> None:
    for alternatives in _resources(policy, target):
        group, resource = alternatives[0]
        for sub in _subresources(policy, target, group, resource):
            possible = builtin.verbs(group, resource, sub)
            for verb in [v for v in possible if not target.verbs or v in target.verbs]:
                for probe in _probes(policy, need, persona, alternatives, sub=sub, verb=verb):
                    _record(policy, need, persona, probe, groups)


def _record(policy: Policy, need: Need, persona: Persona, probe: list[Request],
            groups: dict[tuple[str, Actor, str, int | None, Level], _Group]) -> None:
    """Judge one request (asked in each group it may live in: one satisfied is enough)."""
    shortfalls = []
    for request in probe:
        decision = evaluate(policy, request)
        cause = _shortfall(need, request, decision)
        if cause is None:
            return
        shortfalls.append((cause, decision, request))
    cause, decision, request = shortfalls[0]
    key = (need.rule, persona.actor, cause, decision.rule, decision.level)
    group = groups.setdefault(key, _Group(need, persona, cause, decision))
    example = _describe(request, policy)
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
    wanted = need.level.text
    message = f"{need.rule} needs {wanted} for {what} by {group.persona.label}; {why}"
    return Finding(FindingKind.STARVED, message, decision.rule, need.rule)


# --- what to ask ------------------------------------------------------------------------

def _resources(policy: Policy, target: Target) -> list[list[tuple[str, str]]]:
    """(group, resource) to ask about; each inner list holds the groups one may live in."""
    if target.resource != ANY:
        groups = target.groups()
        if groups is not None:
            return [[(group, target.resource)] for group in groups]
        named = sorted({entry.group for rule in policy.rules for entry in rule.resources
                        if entry.group != "*" and _names_resource(entry.resources,
                                                                  target.resource)})
        return [[(group, target.resource) for group in named or [CUSTOM[0]]]]
    found = {(res.group, res.name) for res in builtin.BUILTIN} | {CUSTOM}
    for rule in policy.rules:
        for entry in rule.resources:
            if entry.group != "*":
                found |= {(entry.group, spec.partition("/")[0]) for spec in entry.resources
                          if not spec.startswith("*")}
    return [[pair] for pair in sorted(found - set(builtin.NOISE))]


def _names_resource(specs: tuple[str, ...], resource: str) -> bool:
    return any(spec.partition("/")[0] == resource for spec in specs)


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


def _probes(policy: Policy, need: Need, persona: Persona, alternatives: list[tuple[str, str]],
            *, sub: str, verb: str) -> Iterator[list[Request]]:
    group0, resource = alternatives[0]
    relevant = _relevant(policy, group0, resource)
    names = _names(relevant, verb, sub)
    for name in names:
        for namespace in _namespaces(need, relevant, group0, resource, verb=verb, name=name):
            yield [Request(verb, persona.user, persona.impersonated, group, resource, sub,
                           namespace, name) for group, _ in alternatives]


def _names(relevant: list[PolicyRule], verb: str, sub: str) -> list[str]:
    """Object names to ask with: none for requests that name no object (a list, a create)."""
    if verb in NAMELESS_VERBS or (verb == "create" and not sub):
        return [""]
    return sorted({NAME, *(name for rule in relevant for entry in rule.resources
                           for name in entry.resource_names)})


def _namespaces(need: Need, relevant: list[PolicyRule], group: str, resource: str, *,
                verb: str, name: str) -> list[str]:
    if resource == "namespaces" and group == "":
        candidates = {name}  # a Namespace's own namespace is its name ("" when none)
    elif not builtin.is_namespaced(group, resource):
        candidates = {""}
    else:
        candidates = {NAMESPACE, *(ns for rule in relevant for ns in rule.namespaces if ns)}
        if need.namespace_contains:
            candidates.add(need.namespace_contains.lower())
        if verb in NAMELESS_VERBS:
            candidates.add("")  # across every namespace
    return sorted(ns for ns in candidates if need.counts_namespace(ns))


def _relevant(policy: Policy, group: str, resource: str) -> list[PolicyRule]:
    """The policy rules that can match some request for this resource."""
    out = []
    for rule in policy.rules:
        if rule.non_resource_urls and not rule.resources and not rule.namespaces:
            continue
        if not rule.resources or any(
                entry.group in (group, "*") and (not entry.resources or any(
                    spec.partition("/")[0] in (resource, "*") for spec in entry.resources))
                for entry in rule.resources):
            out.append(rule)
    return out


def _personas(actor: Actor, policy: Policy, needs: Needs) -> list[Persona]:
    users = {user for rule in policy.rules for user in rule.users}
    groups = {group for rule in policy.rules for group in rule.user_groups}
    if actor in (Actor.PERSON, Actor.IMPERSONATING):
        people = [PERSON, ADMIN]
        people += [Identity(user, (AUTHENTICATED,)) for user in sorted(users)
                   if not is_internal_actor(user)]
        people += [Identity(f"someone-in-{group}", (group, AUTHENTICATED))
                   for group in sorted(groups) if _person_group(group)]
        if actor is Actor.PERSON:
            return [Persona(actor, who, _person_label(who)) for who in people]
        return [Persona(actor, who, f"a person acting --as someone ({who.name})", SOMEONE)
                for who in people]
    if actor is Actor.PROXIED:
        return [Persona(actor, _identity(proxy), f"a person through an access proxy ({proxy})",
                        PERSON) for proxy in sorted(set(needs.proxies)) or [UNNAMED_PROXY]]
    system = sorted({*SYSTEM_USERS, *(u for u in users if is_internal_actor(u))})
    return [Persona(actor, _identity(user), f"Kubernetes' own {user}") for user in system]


def _person_group(group: str) -> bool:
    return group == "system:masters" or not group.startswith("system:")


def _person_label(who: Identity) -> str:
    if who.name == PERSON.name:
        return "a person"
    if who.name.startswith("someone-in-"):
        return f"a person in group {who.groups[0]}"
    return f"a person ({who.name})"


def _identity(user: str) -> Identity:
    """A user with the groups the apiserver gives such a name."""
    parts = user.split(":")
    groups = [AUTHENTICATED]
    if user.startswith("system:serviceaccount:") and len(parts) == 4:
        groups += [SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{parts[2]}"]
    elif user.startswith("system:node:"):
        groups.append("system:nodes")
    return Identity(user, tuple(groups))


def _describe(request: Request, policy: Policy) -> str:
    resource = request.resource
    if len(builtin.lookup(resource)) != 1:
        resource += f".{request.api_group}" if request.api_group else " (core)"
    if request.subresource:
        resource += f"/{request.subresource}"
    text = f"{request.verb} {resource}"
    named_ns = {ns for rule in policy.rules for ns in rule.namespaces}
    if request.namespace in named_ns and request.namespace:
        text += f" in {request.namespace}"
    if request.name and request.name != NAME:
        text += f" named {request.name}"
    return text


# --- secrets ----------------------------------------------------------------------------

def _secrets(policy: Policy, needs: Needs) -> list[Finding]:
    """Each policy rule that writes a Secret's, a token's or a review's body."""
    personas = [p for actor in Actor for p in _personas(actor, policy, needs)]
    found: dict[int, list[str]] = {}
    levels: dict[int, Level] = {}
    whom: dict[int, str] = {}
    for group, combined in sorted(builtin.SECRET_MATERIAL):
        resource, _, sub = combined.partition("/")
        for persona in personas:
            for verb in builtin.verbs(group, resource, sub):
                for request in _secret_requests(policy, persona, group, resource,
                                                sub=sub, verb=verb):
                    decision = evaluate(policy, request)
                    if decision.level > Level.METADATA and decision.rule is not None:
                        examples = found.setdefault(decision.rule, [])
                        levels[decision.rule] = decision.level
                        whom.setdefault(decision.rule, persona.label)
                        text = _describe(request, policy)
                        if text not in examples:
                            examples.append(text)
    return [Finding(FindingKind.EXPOSURE,
                    _secret_message(rule, levels[rule], examples, whom[rule]), rule)
            for rule, examples in sorted(found.items())]


def _secret_requests(policy: Policy, persona: Persona, group: str, resource: str, *,
                     sub: str, verb: str) -> Iterator[Request]:
    relevant = _relevant(policy, group, resource)
    names = _names(relevant, verb, sub)
    namespaces = sorted({NAMESPACE, *(ns for r in relevant for ns in r.namespaces)})
    if not builtin.is_namespaced(group, resource):
        namespaces = [""]
    for name in names:
        for namespace in namespaces:
            yield Request(verb, persona.user, persona.impersonated, group, resource, sub,
                          namespace, name)


def _secret_message(rule: int, level: Level, examples: list[str], whom: str) -> str:
    shown = ", ".join(f"`{e}`" for e in examples[:EXAMPLES])
    more = len(examples) - EXAMPLES
    if more > 0:
        shown += f" and {more} more request{'s' if more > 1 else ''}"
    return (f"policy rule {rule} writes secret values to the audit trail: {level.text} for "
            f"{shown} by {whom} (Secrets, token requests and token reviews must stay at "
            "Metadata)")
