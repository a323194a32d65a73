"""Which level a policy gives a request, decided the way the apiserver decides it.

The first rule that matches decides; when none does, nothing is recorded (level None).
A rule matches when each field it gives holds: `users` (the user name), `userGroups` (any
of the user's groups), `verbs`, and then either `resources`/`namespaces` (resource
requests only) or `nonResourceURLs` (non-resource requests only); a rule with none of the
three matches every request, resource or not.

- `namespaces` compares the request's namespace; a cluster-scoped request has "", so
  `""` in the list selects cluster-scoped requests. A request on a Namespace object by
  name (get, update, delete of /api/v1/namespaces/NAME) has that name as its namespace;
  its create and list have "".
- `group` "" is the core group only, never "any"; "*" is every group.
- `resources` entries: `pods` (the resource, none of its subresources), `pods/log`,
  `pods/*` (every subresource of pods, and, since the test does not ask for a
  subresource, pods itself too), `*/status` (that subresource of any resource of the
  group), `*` (everything of the group, subresources included). An empty list is
  everything of the group.
- `resourceNames` compares the request's object name, which a create, a list and a
  watch do not have: such a `resourceNames` entry never matches them.
- `nonResourceURLs`: an exact path, or a prefix ending in `*`, or `*` alone.
- Stages: the policy's `omitStages` and the deciding rule's are both omitted (their
  union). `omitManagedFields`: the rule's own value when it gives one, else the policy's.

The policy is evaluated for the identity that authenticated. The apiserver's handler
chain runs authentication, then auditing, then impersonation, so when a request
impersonates someone (`kubectl --as`, or an access proxy acting for a person) the policy
sees the impersonator: the person typing `--as`, or the proxy's own service account.
Only the recorded event shows whom it acted as (`impersonatedUser`).
"""

from __future__ import annotations

from dataclasses import dataclass

from healert_webhook.auditpolicy.document import Level, Policy, PolicyRule

# Verbs and subresources of the requests the apiserver treats as long-running: for these
# it writes a ResponseStarted event when the response begins, before ResponseComplete.
LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "proxy", "log", "portforward"})


@dataclass(frozen=True)
class Identity:
    """A user as the apiserver knows it after authentication."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """The attributes of a request that the policy is evaluated on."""

    verb: str
    user: Identity | None          # who authenticated; None after failed authentication
    impersonated: Identity | None = None  # whom it acts as: never seen by the policy
    api_group: str = ""
    resource: str = ""             # "" for a non-resource request (/healthz, /api)
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""                 # the URL path of a non-resource request

    @property
    def is_resource_request(self) -> bool:
        """True for requests on API resources, False for non-resource URLs."""
        return bool(self.resource)

    @property
    def long_running(self) -> bool:
        """True when the apiserver writes a ResponseStarted event for this request."""
        return (self.verb in LONG_RUNNING_VERBS
                or (self.is_resource_request and self.subresource in LONG_RUNNING_SUBRESOURCES))


@dataclass(frozen=True)
class Decision:
    """What the policy decides for one request."""

    level: Level
    omit_stages: frozenset[str]
    omit_managed_fields: bool
    rule: int | None  # the deciding policy rule, counted from 1; None when none matched

    def stages(self, request: Request) -> frozenset[str]:
        """The stages the apiserver writes an event for (Panic only if it panics)."""
        if self.level is Level.NONE:
            return frozenset()
        written = {"RequestReceived", "ResponseComplete"}
        if request.long_running:
            written.add("ResponseStarted")
        return frozenset(written - self.omit_stages)


def evaluate(policy: Policy, request: Request) -> Decision:
    """The first matching rule's level, stages and managed-fields choice."""
    for number, rule in enumerate(policy.rules, start=1):
        if rule_matches(rule, request):
            omit = rule.omit_managed_fields
            return Decision(
                level=rule.level,
                omit_stages=frozenset(policy.omit_stages) | frozenset(rule.omit_stages),
                omit_managed_fields=policy.omit_managed_fields if omit is None else omit,
                rule=number,
            )
    return Decision(Level.NONE, frozenset(policy.omit_stages), policy.omit_managed_fields, None)


def rule_matches(rule: PolicyRule, request: Request) -> bool:
    """Whether one policy rule matches the request (the apiserver's own test)."""
    user = request.user
    if rule.users and (user is None or user.name not in rule.users):
        return False
    if rule.user_groups and (user is None
                             or not any(group in rule.user_groups for group in user.groups)):
        return False
    if rule.verbs and request.verb not in rule.verbs:
        return False
    if rule.namespaces or rule.resources:
        return _matches_resource(rule, request)
    if rule.non_resource_urls:
        return not request.is_resource_request and any(
            _path_matches(request.path, spec) for spec in rule.non_resource_urls)
    return True


def _path_matches(path: str, spec: str) -> bool:
    if spec in ("*", path):
        return True
    return spec.endswith("*") and path.startswith(spec.rstrip("*"))


def _matches_resource(rule: PolicyRule, request: Request) -> bool:
    if not request.is_resource_request:
        return False
    if rule.namespaces and request.namespace not in rule.namespaces:
        return False
    if not rule.resources:
        return True
    resource, sub = request.resource, request.subresource
    combined = f"{resource}/{sub}" if sub else resource
    for entry in rule.resources:
        if entry.group not in (request.api_group, "*"):
            continue
        if not entry.resources:
            return True
        if entry.resource_names and request.name not in entry.resource_names:
            continue
        for spec in entry.resources:
            if spec in ("*", combined):
                return True
            if sub and spec.startswith("*/") and spec[2:] == sub:
                return True
            if spec.endswith("/*") and spec[:-2] == resource:
                return True
    return False
