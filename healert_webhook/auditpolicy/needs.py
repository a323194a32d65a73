"""What detection needs from the audit policy, rule by rule.

Each detection rule can match some requests (`Target`s: resource, subresources, verbs),
needs them recorded at a lowest level (Metadata unless it reads a request or response
body), may read `metadata.managedFields` of the carried object, and must see them when
made by certain actors. The policy generator and checker work on this description only,
not on rules.yaml.

Actors, as detection tells them apart and as the policy can (or cannot) see them:

- `PERSON`: a person authenticating as themselves.
- `PROXIED`: a person through an access proxy (Rancher, Teleport, Pinniped,
  kube-oidc-proxy): the proxy authenticates as its own identity, usually a service
  account, and impersonates the person. The policy sees only the proxy.
- `IMPERSONATING`: a person acting `--as` someone. The policy sees the person.
- `SYSTEM`: Kubernetes' own actors acting for themselves (controllers, nodes, operators),
  for rules that do not skip them.

`needs_of` reads them off a rule set (see its docstring for how each part is derived).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from healert_webhook.auditpolicy import builtin
from healert_webhook.auditpolicy.document import Level
from healert_webhook.rules import Rule, RuleSet
from healert_webhook.rules.conditions import (
    CONDITIONS,
    Condition,
    GitOpsManaged,
    IgnoreNamespaces,
    NamespaceContains,
)
from healert_webhook.rules.model import Check

ANY = "*"  # a Target's resource that stands for every resource of every group
WRITES = frozenset({"create", "update", "patch"})
# Subresources that are streams (sessions, proxied traffic): a write of one carries no
# object, so no entity can be read from its body.
STREAMS = frozenset({"attach", "exec", "portforward", "proxy"})
_BY_REASONS: dict[tuple[str, ...], Condition] = {c.reasons: c for c in CONDITIONS}


class Actor(StrEnum):
    """Who made a request, as far as detection is concerned."""

    PERSON = "person"
    PROXIED = "proxied"
    IMPERSONATING = "impersonating"
    SYSTEM = "system"


PEOPLE = frozenset({Actor.PERSON, Actor.PROXIED, Actor.IMPERSONATING})


@dataclass(frozen=True)
class Target:
    """Requests a detection rule can match.

    `subresources` None means the resource and any of its subresources (a rule that names
    no subresource), less `excluded_subresources`; otherwise the subresources named, ""
    standing for the resource itself. `verbs` empty means any verb. `group` None means
    the built-in group(s) of `resource`, or, for a resource Kubernetes does not ship, a
    group nobody told us (see the generator for what it does then).
    """

    resource: str
    verbs: frozenset[str] = frozenset()
    subresources: frozenset[str] | None = frozenset({""})
    excluded_subresources: frozenset[str] = frozenset()
    group: str | None = None

    def groups(self) -> tuple[str, ...] | None:
        """The API groups the resource lives in; None when unknown (a custom resource)."""
        if self.group is not None:
            return (self.group,)
        found = tuple(res.group for res in builtin.lookup(self.resource))
        return found or None

    def describe(self) -> str:
        """`get, create pods/exec` in a form an operator reads."""
        verbs = ", ".join(sorted(self.verbs)) if self.verbs else "any verb on"
        if self.resource == ANY:
            what = "any resource"
        elif self.subresources is None:
            what = f"{self.resource} (and its subresources)"
        else:
            what = ", ".join(f"{self.resource}/{sub}" if sub else self.resource
                             for sub in sorted(self.subresources))
        return f"{verbs} {what}"


@dataclass(frozen=True)
class Need:
    """What one detection rule needs recorded."""

    rule: str
    targets: tuple[Target, ...]
    level: Level = Level.METADATA
    managed_fields: bool = False
    actors: frozenset[Actor] = PEOPLE
    # Namespaces whose requests the rule never counts (exact names), and a text the
    # namespace must contain; `check` does not ask the policy for requests the rule skips.
    ignore_namespaces: frozenset[str] = frozenset()
    namespace_contains: str = ""
    reason: str = ""  # why this level, when no condition of the rule asks for it

    def counts_namespace(self, namespace: str) -> bool:
        """Whether the rule can count a request in this namespace ("" cluster-scoped)."""
        if namespace and namespace in self.ignore_namespaces:
            return False
        return self.namespace_contains.lower() in namespace.lower()


@dataclass(frozen=True)
class Needs:
    """Every enabled rule's needs, and what is known about the cluster's identities.

    `proxies` are the user names of the access proxies in use (e.g.
    `system:serviceaccount:teleport:teleport-kube-agent`); when given, only their
    requests are kept for `PROXIED` needs, and other service accounts are dropped.
    `automation` are users that never act for a person (GitOps controllers): their
    requests are dropped unless a `SYSTEM` need wants them.
    """

    needs: tuple[Need, ...]
    proxies: tuple[str, ...] = ()
    automation: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the needs assume, said in the policy's header


class NeedsError(ValueError):
    """The rules cannot be described for a policy as asked; the message says why."""


def needs_of(ruleset: RuleSet, *, cluster_view: bool = True,
             groups: Mapping[str, Sequence[str]] | None = None,
             proxies: Sequence[str] = ()) -> Needs:
    """What each enabled rule of `ruleset` needs recorded, for a policy to be written or
    checked against.

    - Requests: the rule's resources (any resource when it names none), its subresource
      (the resource and every subresource but `ignore_subresources` when it names none)
      and its verbs (any when it names none). A resource's API group comes from `groups`
      (RESOURCE -> groups: the operator's word), else the built-in table, else
      `builtin.KNOWN_CUSTOM`; otherwise it stays unknown (`Target.group` None).
    - Level: the highest of its conditions' lowest levels (`Condition.level`, or
      `level_with_view` when `cluster_view` says the agent watches the cluster). Managed
      fields when `gitops_managed` is read from the object and field managers count.
    - The friction event's entity: without the cluster view it is read from the object
      a write carries (labels, owner, generated name), so writes get RequestResponse;
      with it, only a create still needs its object (Request), for a generated name.
    - Actors: people, through an access proxy and acting `--as` someone; with
      Kubernetes' own actors when the rule does not have `ignore_system`.
    - Namespaces: `config.ignore_namespaces` and the rule's own, and its
      `namespace_contains`.

    `proxies` are the access proxies' user names, and GitOps controllers named exactly in
    `config.gitops.controllers` are automation that never acts for a person.
    """
    explicit = {name: tuple(found) for name, found in (groups or {}).items()}
    for name in sorted(explicit):
        if builtin.lookup(name):
            raise NeedsError(f"{name} is a built-in resource: its group is known, only a "
                             "custom resource can be given one")
    found = tuple(need for rule in ruleset.enabled
                  for need in rule_needs(rule, ruleset, cluster_view=cluster_view,
                                         groups=explicit))
    note = ("For an agent that watches the cluster (policy --cluster-view on): GitOps "
            "ownership and entities come from its view, not from request bodies."
            if cluster_view else
            "For an agent that does not watch the cluster (policy --cluster-view off): "
            "GitOps ownership and entities are read from request and response bodies.")
    return Needs(found, proxies=tuple(proxies),
                 automation=tuple(sorted(ruleset.gitops.controllers.exact)), notes=(note,))


def rule_needs(rule: Rule, ruleset: RuleSet, *, cluster_view: bool,
               groups: Mapping[str, tuple[str, ...]]) -> tuple[Need, ...]:
    """One rule's needs: its conditions' level over its whole scope, and its entity's
    where that asks for more."""
    level, managed = _condition_needs(rule, ruleset, cluster_view)
    # A rule may opt out of config.ignore_namespaces (and keep only its own).
    ignored = frozenset(ruleset.ignore_namespaces) \
        if getattr(rule, "config_namespaces", True) else frozenset()
    part = ""
    for check in rule.checks:
        if isinstance(check, IgnoreNamespaces):
            ignored |= check.names
        elif isinstance(check, NamespaceContains):
            part = check.part
    actors = PEOPLE if rule.ignore_system else PEOPLE | {Actor.SYSTEM}
    base = Need(rule.name, _targets(rule, groups), level, managed, actors, ignored, part)
    found = [need for need in _without_stream_bodies(base) if need.targets]
    entity = _entity_need(found[0], cluster_view) if found else None
    return tuple(found) if entity is None else (*found, entity)


def condition_level(condition: Condition, cluster_view: bool) -> Level:
    """The lowest level at which `condition` is decided, with or without the view."""
    text = condition.level
    if cluster_view:
        text = getattr(condition, "level_with_view", None) or text
    level = Level.from_text(text)
    # A level the table misspells must not starve the rule: record everything for it.
    return Level.REQUEST_RESPONSE if level is None else level


def rule_level(rule: Rule, cluster_view: bool) -> Level:
    """The lowest level at which every condition of `rule` can be decided."""
    return max((_check_level(check, cluster_view) for check in rule.checks),
               default=Level.METADATA)


def _check_level(check: Check, cluster_view: bool) -> Level:
    # A check may know better than its row: what it reads can depend on the rule's verbs
    # (a write states the object in its request, a read or delete only in the answer)
    # or, with the view, on its resources (the view holds only the kinds it watches).
    own = getattr(check, "level_with_view", None) if cluster_view else None
    own = own or getattr(check, "level", None)
    if isinstance(own, str):
        stated = Level.from_text(own)
        return Level.REQUEST_RESPONSE if stated is None else max(Level.METADATA, stated)
    condition = _BY_REASONS.get(check.reasons)
    # A check the table does not list must not starve its rule: record everything for it.
    return (Level.REQUEST_RESPONSE if condition is None
            else max(Level.METADATA, condition_level(condition, cluster_view)))


def _condition_needs(rule: Rule, ruleset: RuleSet, cluster_view: bool) -> tuple[Level, bool]:
    """The level the rule's conditions need, and whether managed fields are read."""
    managed = bool(ruleset.gitops.field_managers) and any(
        isinstance(check, GitOpsManaged) and _check_level(check, cluster_view) > Level.METADATA
        for check in rule.checks)
    return rule_level(rule, cluster_view), managed


def _targets(rule: Rule, groups: Mapping[str, tuple[str, ...]]) -> tuple[Target, ...]:
    verbs = frozenset(rule.verbs or ())
    subs = None if rule.subresource is None else frozenset({rule.subresource})
    excluded = frozenset(rule.ignore_subresources) if subs is None else frozenset()
    if rule.resources is None:
        return (Target(ANY, verbs, subs, excluded),)
    return tuple(Target(name, verbs, subs, excluded, group)
                 for name in sorted(rule.resources)
                 for group in _groups_of(name, groups))


def _groups_of(name: str, groups: Mapping[str, tuple[str, ...]]) -> tuple[str | None, ...]:
    """The groups to give a Target of `name`; None: the built-in table's, or unknown."""
    if name in groups:
        return tuple(sorted(set(groups[name])))
    return builtin.custom_groups(name) or (None,)


def _without_stream_bodies(need: Need) -> tuple[Need, Need]:
    """`need` split in two: its requests that can carry a body, and its streams (exec,
    attach, port-forward, proxy) at Metadata, since they never carry an object and what
    a condition could read of them (the event's own annotations) is in every level."""
    if need.level <= Level.METADATA:
        return need, replace(need, targets=())
    bodies, streams = [], []
    for target in need.targets:
        if target.subresources is None:
            bodies.append(replace(target, excluded_subresources=target.excluded_subresources
                                  | STREAMS))
            kept = _streams_of(target) - target.excluded_subresources
        else:
            if target.subresources - STREAMS:
                bodies.append(replace(target, subresources=target.subresources - STREAMS))
            kept = target.subresources & STREAMS
        if kept:
            streams.append(replace(target, subresources=frozenset(kept),
                                   excluded_subresources=frozenset()))
    return (replace(need, targets=tuple(bodies)),
            replace(need, targets=tuple(streams), level=Level.METADATA, managed_fields=False))


def _streams_of(target: Target) -> frozenset[str]:
    """The stream subresources the target's resource can have: a built-in one's, none for
    a custom resource of a known group (a CRD has only status and scale), all for any
    resource or one of unknown group (an aggregated API may have any)."""
    if target.resource == ANY:
        return STREAMS
    if target.group is None and builtin.lookup(target.resource):
        return STREAMS & frozenset(sub for group in target.groups() or ()
                                   for sub in builtin.subresources(group, target.resource))
    return frozenset() if target.group is not None else STREAMS


def _entity_need(need: Need, cluster_view: bool) -> Need | None:
    """What naming the friction event's entity needs beyond `need`, if anything."""
    wanted = Level.REQUEST if cluster_view else Level.REQUEST_RESPONSE
    if need.level >= wanted:
        return None
    verbs = frozenset({"create"}) if cluster_view else WRITES
    targets = []
    for target in need.targets:
        asked = (target.verbs or WRITES) & verbs
        subs = _entity_subresources(target, cluster_view)
        if asked and (subs is None or subs):
            targets.append(replace(target, verbs=asked, subresources=subs,
                                   excluded_subresources=(target.excluded_subresources
                                                          | STREAMS) if subs is None
                                   else frozenset()))
    if not targets:
        return None
    reason = ("a generated name is only in the object a create carries" if cluster_view
              else "the object a write carries names the entity: labels, owner, "
                   "generated name")
    return replace(need, targets=tuple(targets), level=wanted, managed_fields=False,
                   reason=reason)


def _entity_subresources(target: Target, cluster_view: bool) -> frozenset[str] | None:
    """The target's subresources whose writes carry an object worth reading (None: the
    resource and any subresource but streams)."""
    if cluster_view:
        # Only the resource itself: a subresource's create names its parent.
        return frozenset({""}) if target.subresources is None or "" in target.subresources \
            else frozenset()
    if target.subresources is None:
        return None
    return target.subresources - STREAMS
