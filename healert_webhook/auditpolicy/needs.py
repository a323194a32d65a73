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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from healert_webhook.auditpolicy import builtin
from healert_webhook.auditpolicy.document import Level

ANY = "*"  # a Target's resource that stands for every resource of every group


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
