"""One candidate event: the fields its rules' checks read, each read once.

An event becomes a candidate when the rule index found rules that may match it; only
then are its fields read beyond the five the index decides on. What only some checks
ask for (the user agent, the actor's groups, GitOps evidence, whether a GitOps
controller wrote, the object the request and the answer carry) is computed on first use.

GitOps evidence comes from the view of the cluster when the detector has one that keeps
the GitOps keys (so it holds for events logged at Metadata level), else from the object
the event carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from healert_webhook import audit
from healert_webhook.cluster import resolve
from healert_webhook.rules import fields
from healert_webhook.rules.matchers import GitOps

if TYPE_CHECKING:
    from healert_webhook.cluster.view import View


class Candidate:
    """The fields of one candidate event the rule checks read, extracted once."""

    __slots__ = ("_agent", "_bodies", "_controller", "_evidence", "_gitops", "_groups", "_seen",
                 "_view", "actor", "code", "event", "name", "namespace", "resource", "scope_ns",
                 "subresource", "verb")

    def __init__(self, event: dict[str, Any], ref: dict[str, Any], gitops: GitOps,
                 proxies: audit.Proxies = audit.NO_PROXIES, view: View | None = None) -> None:
        self.event = event
        self.resource: str = ref.get("resource") or ""
        self.subresource: str = ref.get("subresource") or ""
        self.name: str = ref.get("name") or ""
        if self.subresource == "proxy":
            self.name = audit.proxied_name(self.name)
        self.namespace: str = ref.get("namespace") or ""
        # A namespace's own events (create, delete) belong to it, for the exclusions.
        self.scope_ns = self.name if self.resource == "namespaces" and not self.namespace \
            else self.namespace
        self.verb: str = event["verb"]
        self.actor = audit.resolve_actor(event, proxies)
        self.code = audit.response_code(event)
        self._gitops = gitops
        self._agent: str | None = None
        self._groups: tuple[str, ...] | None = None
        self._controller: bool | None = None
        self._evidence: tuple[str | None] | None = None
        self._view = view  # only a view that keeps the GitOps keys (see the docstring)
        self._seen = False  # the view holds the object (its answer is known)
        self._bodies: fields.Bodies | None = None

    def agent(self) -> str:
        """The User-Agent, lower-cased."""
        if self._agent is None:
            self._agent = audit.user_agent(self.event).lower()
        return self._agent

    def groups(self) -> tuple[str, ...]:
        """The actor's groups."""
        if self._groups is None:
            self._groups = audit.actor_groups(self.event, self.actor)
        return self._groups

    def response(self) -> str | None:
        """`success`, `denied` or `error`; None without a response code."""
        return audit.response_class(self.code)

    def by_controller(self) -> bool:
        """True when a configured GitOps controller made (or impersonated for) the request."""
        if self._controller is None:
            match, actor = self._gitops.controllers, self.actor
            self._controller = match.matches(actor.authenticated) or match.matches(actor.name)
        return self._controller

    def gitops_evidence(self) -> str | None:
        """What marks the object as GitOps-managed (its copy in the view, else the one
        the event carries), or None."""
        if self._evidence is None:
            gitops = self._gitops
            found = None
            if self._view is not None:
                answer = resolve.gitops(self._view, self.resource, self.namespace, self.name,
                                        gitops)
                found, self._seen = answer.evidence, answer.known
            if found is None:
                found = audit.gitops_evidence(self.event, gitops.annotations, gitops.labels,
                                              gitops.field_managers)
            self._evidence = (found,)
        return self._evidence[0]

    def gitops_unseen(self) -> str | None:
        """Why GitOps ownership cannot be seen (neither the view nor the event shows the
        object), or None when it was looked at."""
        self.gitops_evidence()
        if self._seen or audit.carried_metadata(self.event) is not None:
            return None
        if self._view is None:
            return ("the event carries no object, so GitOps ownership cannot be seen (log "
                    "this request at RequestResponse, or run the agent with its view of the "
                    "cluster)")
        return ("the view of the cluster does not hold the object and the event carries "
                "none, so GitOps ownership cannot be seen")

    def bodies(self) -> fields.Bodies:
        """The object as the request states it and as the answer returns it."""
        if self._bodies is None:
            self._bodies = fields.bodies(self.event, self.verb)
        return self._bodies
