"""Tolerant helpers over parsed audit events (audit.k8s.io/v1 and v1beta1).

Events stay the plain dicts `orjson.loads` returns: no per-event model objects. These
helpers run only on the slow path (events that might match a rule, or that broke the fast
path), so they can afford to check every type. None of them recurses into input or
formats it with `repr`: an event nested a thousand levels deep costs what a flat one does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeGuard, cast

from healert_webhook.text import clean_text

FIRING_STAGES = frozenset({"ResponseStarted", "ResponseComplete"})
QUIET_STAGES = frozenset({"RequestReceived", "Panic"})
# Usernames under system: that are people (admin kubeconfigs), not controllers.
HUMAN_SYSTEM_USERS = frozenset({"system:admin", "system:masters"})
# RFC 3339 as the apiserver writes it (metav1.MicroTime: six fractional digits; v1beta1's
# `timestamp` none), ASCII digits only: `\d` would also accept full-width and other
# Unicode digits, which no parser of the backend's accepts. The calendar is checked apart.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])", re.ASCII)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
MAX_TIMESTAMP = 40
MAX_FAILURE_ID = 64


class BadDocument(ValueError):
    """A request body or file is JSON but not an audit Event, EventList or list of events."""


def batch_items(doc: Any, mapping: Any = dict, sequence: Any = list) -> Sequence[Any]:
    """The events of a parsed document: an EventList, a single Event, or a JSON array.

    `mapping` and `sequence` are the types objects and arrays were parsed into (orjson's
    dict and list, or simdjson's proxies); the result is a sequence of the items.
    """
    if isinstance(doc, sequence):
        return cast(Sequence[Any], doc)
    if isinstance(doc, mapping):
        items = doc.get("items")
        if doc.get("kind") == "EventList" or (items is not None and "auditID" not in doc):
            if not isinstance(items, sequence):
                if items is None:
                    return []
                raise BadDocument("EventList 'items' is not a list")
            return cast(Sequence[Any], items)
        return [doc]
    raise BadDocument(f"expected an object or an array, got {type(doc).__name__}")


def is_internal_actor(username: str) -> bool:
    """True for Kubernetes' own actors: `system:*` users other than admins, and nobody."""
    if not username:
        return True
    return username.startswith("system:") and username not in HUMAN_SYSTEM_USERS


# --- who acted --------------------------------------------------------------------------

class Actor(NamedTuple):
    """Who a request is charged to, and through whom it came.

    `name` is the person when an internal identity (an access proxy's service account)
    impersonated one; otherwise the authenticated user. `proxy` is that internal identity
    in the first case, `as_user` the impersonated identity in the second.
    """

    name: str
    internal: bool
    authenticated: str
    impersonated: str
    proxy: str
    as_user: str


def _username(user: Any) -> str:
    if isinstance(user, dict):
        name = user.get("username")
        if isinstance(name, str):
            return name
    return ""


@dataclass(frozen=True, slots=True)
class Proxies:
    """Access proxies configured by name: identities that are not internal (a
    kube-oidc-proxy's client certificate) yet act for the user they impersonate.

    `users` are user names; `groups` are groups any of whose members is such a proxy.
    """

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Proxies:
        """From the setting's entries: `group:NAME` is a group, `user:NAME` or a bare
        NAME a user name."""
        users: set[str] = set()
        groups: set[str] = set()
        for name in names:
            if name.startswith(GROUP_PREFIX):
                groups.add(name[len(GROUP_PREFIX):])
            else:
                users.add(name.removeprefix(USER_PREFIX))
        return cls(frozenset(users), frozenset(groups))

    def __bool__(self) -> bool:
        return bool(self.users or self.groups)

    def holds(self, user: Any) -> bool:
        """True when the authenticated `user` (the event's `user`) is one of them."""
        if not isinstance(user, dict):
            return False
        if self.users and user.get("username") in self.users:
            return True
        found = user.get("groups")
        return bool(self.groups) and isinstance(found, list) \
            and any(isinstance(g, str) and g in self.groups for g in found)


GROUP_PREFIX, USER_PREFIX = "group:", "user:"
NO_PROXIES = Proxies()


def resolve_actor(event: dict[str, Any], proxies: Proxies = NO_PROXIES) -> Actor:
    """The actor of a request (see `Actor`): the person, also behind an access proxy.

    Rancher, Teleport, Pinniped and kube-oidc-proxy authenticate as their own service
    account and send the person as the impersonated user; `kubectl --as` is a person
    acting as someone else. Only the first hands the actor over: a person stays the actor
    whoever they impersonate, and an internal identity impersonating another internal
    one (a controller acting as a service account) stays itself. A proxy named in
    `proxies` (one that authenticates as no internal identity) always hands the actor
    over to whoever it impersonates.
    """
    authenticated = _username(event.get("user"))
    internal = is_internal_actor(authenticated)
    imp = event.get("impersonatedUser")
    if not imp:  # nearly every request
        return Actor(authenticated, internal, authenticated, "", "", "")
    impersonated = _username(imp)
    if impersonated and authenticated:
        if internal and not is_internal_actor(impersonated):
            return Actor(impersonated, False, authenticated, impersonated, authenticated, "")
        if proxies and proxies.holds(event.get("user")):
            return Actor(impersonated, is_internal_actor(impersonated), authenticated,
                         impersonated, authenticated, "")
    return Actor(authenticated, internal, authenticated, impersonated, "", impersonated)


def actor_groups(event: dict[str, Any], actor: Actor) -> tuple[str, ...]:
    """The groups of the actor: the impersonated user's behind a proxy, else the user's."""
    user = event.get("impersonatedUser" if actor.proxy else "user")
    if isinstance(user, dict):
        groups = user.get("groups")
        if isinstance(groups, list):
            return tuple(g for g in groups if isinstance(g, str))
    return ()


# --- the dedup key ----------------------------------------------------------------------

def _key_part(value: Any) -> str:
    """One key field as unambiguous text; never the input's repr.

    Separators inside a string are escaped so that no two different field lists join to
    the same text; a value that is not a string stands for its type only. Strings free
    of the two control characters encode as themselves, so keys of well-formed events
    are unchanged by the escaping.
    """
    if isinstance(value, str):
        if "\x00" in value or "\x01" in value:
            return value.replace("\x01", "\x01\x01").replace("\x00", "\x01\x00")
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return f"\x01{type(value).__name__}:{value!s}"
    return f"\x01{type(value).__name__}"


# kubectl's interactive sessions: one `kubectl exec` (attach, port-forward) may be two
# requests, a WebSocket upgrade (verb get) and, when that fails, SPDY (verb create).
SESSION_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})


def session_window(event: dict[str, Any]) -> str | None:
    """For a session attempt on a pod that kubectl may have made twice, the ten seconds of
    the clock it arrived in (its `requestReceivedTimestamp` cut after the tens of
    seconds); None for other requests, which keep their request's own key.

    kubectl 1.30 and later try a WebSocket (verb get) and, when the upgrade is refused
    (403: a Role without exec rights, or granting only `create` on pods/exec) or fails,
    fall back to SPDY (verb create) within milliseconds: two audit events, two
    auditIDs, one attempt. So an attempt that did not succeed, and any SPDY request (the
    fallback; also older kubectl's only way, whose sessions in one window are counted
    once), are keyed by the window; a WebSocket session that succeeded is its own.
    """
    ref = event.get("objectRef")
    if not isinstance(ref, dict) or ref.get("resource") != "pods" \
            or ref.get("subresource") not in SESSION_SUBRESOURCES:
        return None
    code = response_code(event)
    if event.get("verb") != "create" and (code is None or code < 400):
        return None
    stamp = event.get("requestReceivedTimestamp")
    return stamp[:18] if valid_timestamp(stamp) else None


def dedup_key(event: dict[str, Any], username: str, verb: str, rule: str,
              impersonated: str = "") -> str:
    """The key of one request's detection by one rule, the same across stages and resends.

    auditID alone is client-settable, so the request's time, verb, URI and user are part
    of the key too. `username` is the authenticated user; `impersonated`, when given, is
    appended so that two people behind one access proxy never share a key.

    A session attempt kubectl may have made twice (see `session_window`) is keyed by who,
    which pod and subresource and the ten seconds it began in, not by its auditID, verb
    or URI: the refused WebSocket attempt and kubectl's SPDY fallback share the key, so
    the outbox keeps one of them whichever batch, source or restart brings the other.
    """
    window = session_window(event)
    if window is not None:
        ref = event["objectRef"]
        parts: list[Any] = ["session", window, ref.get("namespace"), ref.get("name"),
                            ref.get("subresource"), username, rule]
    else:
        parts = [event.get("auditID"), event.get("requestReceivedTimestamp")
                 or event.get("timestamp"), verb, event.get("requestURI"), username, rule]
    if impersonated:
        parts.append(impersonated)
    try:
        raw = "\x00".join(parts)
    except TypeError:  # a missing or non-string field
        raw = None
    # Well-formed events hold no separator: the plain join is already unambiguous.
    if raw is None or raw.count("\x00") != len(parts) - 1 or "\x01" in raw:
        raw = "\x00".join(_key_part(part) for part in parts)
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# --- timestamps -------------------------------------------------------------------------

def valid_timestamp(value: Any) -> TypeGuard[str]:
    """True for an ASCII RFC 3339 date and time that exists on the calendar.

    Hours run 00-23, minutes 00-59 and seconds 00-59: Go's time package never writes a
    leap second (:60), and the backend's ISO 8601 parser refuses one. Offsets are `Z` or
    `+hh:mm`/`-hh:mm` below 24 hours; years start at 0001.
    """
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP:
        return False
    found = _TIMESTAMP.fullmatch(value)
    if found is None:
        return False
    day = found.group(2)
    if day < "29":  # every month has 28 days
        return value[:4] != "0000"
    year, month = int(value[:4]), int(found.group(1))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return year > 0 and int(day) <= (_DAYS[month - 1] if month != 2 or leap else 28)


# Where the friction event's time comes from when the request's own receive time is not
# usable, in order, and the fix-up counted for each.
_TIME_SOURCES = (("stageTimestamp", "timestamp_from_stage"),
                 ("timestamp", "timestamp_from_v1beta1"))
# How far an event's time may lie ahead of the moment the agent received it. An event is
# always written after its request arrived, so a time ahead is only the disagreement of
# two clocks: NTP keeps those within milliseconds, and 5 minutes leaves room for a badly
# kept one. Beyond it the time is wrong, and harmful: the backend
# lists an entity's events newest first, 500 at most, so events stamped years ahead
# would hide every real one from the read that verifies a lost answer.
FUTURE_SKEW = 300.0  # seconds
FUTURE = "future_"  # prefix of the fix-ups made because a time lay too far ahead
_REPAIRS = (*(fixup for _, fixup in _TIME_SOURCES), "timestamp_missing")
FIXUPS = (*_REPAIRS, *(FUTURE + fixup for fixup in _REPAIRS))  # every fix-up there is


def _ahead(value: str, latest: float) -> bool:
    """True when the (valid) RFC 3339 time `value` is later than `latest` (Unix time)."""
    try:
        return datetime.fromisoformat(value).timestamp() > latest
    except (ValueError, OverflowError):  # beyond what datetime holds: year 9999 and on
        return not value.startswith("0")


def event_timestamp(event: dict[str, Any],
                    received: float | None = None) -> tuple[str | None, str | None]:
    """The request's time exactly as the apiserver wrote it, and the fix-up it needed.

    The apiserver's microsecond `requestReceivedTimestamp` is kept verbatim. When it is
    missing, not a real time, or (given `received`, the Unix time the agent received the
    event) more than FUTURE_SKEW ahead of it, `stageTimestamp` (then v1beta1's
    `timestamp`) stands in, if it is usable by the same tests; when none is, the field is
    left out and the backend stamps its own time. The second value names the fix-up
    (`timestamp_from_stage`, `timestamp_missing`, ...; prefixed with `future_` when a
    time was refused for lying ahead), or is None when the receive time was used.
    """
    latest = None if received is None else received + FUTURE_SKEW
    value = event.get("requestReceivedTimestamp")
    ahead = False
    if valid_timestamp(value):
        if latest is None or not _ahead(value, latest):
            return value, None
        ahead = True
    for key, fixup in _TIME_SOURCES:
        value = event.get(key)
        if valid_timestamp(value):
            if latest is not None and _ahead(value, latest):
                ahead = True
                continue
            return value, FUTURE + fixup if ahead else fixup
    return None, FUTURE + "timestamp_missing" if ahead else "timestamp_missing"


# --- text -------------------------------------------------------------------------------

def failure_id(event: Any) -> str:
    """The auditID of an event for a log line: cleaned and cut, or '' when not a string."""
    audit_id = event.get("auditID") if isinstance(event, dict) else None
    return clean_text(audit_id, MAX_FAILURE_ID) if isinstance(audit_id, str) else ""


def proxied_name(name: str) -> str:
    """The object's name in a proxy request's `[scheme:]name[:port]` (the apiserver's
    reading of `pods/<id>/proxy`, `services/<id>/proxy`, `nodes/<id>/proxy`)."""
    if ":" not in name:
        return name
    parts = name.split(":")
    found = parts[0] if len(parts) == 2 else parts[1] if len(parts) == 3 else ""
    return found or name


def user_agent(event: dict[str, Any]) -> str:
    """The request's User-Agent, '' when absent or not a string."""
    agent = event.get("userAgent")
    return agent if isinstance(agent, str) else ""


def response_code(event: dict[str, Any]) -> int | None:
    """The HTTP status the apiserver answered, when the event carries one."""
    status = event.get("responseStatus")
    code = status.get("code") if isinstance(status, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


# The response classes a rule can ask for: 1xx-3xx succeeded; 401 and 403 are refusals
# (authentication or authorization, RBAC or admission); any other 4xx or 5xx failed.
RESPONSE_CLASSES = ("success", "denied", "error")


def response_class(code: int | None) -> str | None:
    """`success`, `denied` or `error` for a status code; None when there is none."""
    if code is None:
        return None
    if code < 400:
        return "success"
    return "denied" if code in (401, 403) else "error"


def carried_objects(event: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(field, metadata) of the objects the event carries, responseObject first.

    A Status (what a refused or deleted request answers) describes no object, and a JSON
    patch is an array: both are passed over.
    """
    for key in ("responseObject", "requestObject"):
        obj = event.get(key)
        if isinstance(obj, dict) and obj.get("kind") != "Status":
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                yield key, meta


def carried_metadata(event: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of the first object `carried_objects` yields, or None."""
    for key in ("responseObject", "requestObject"):
        obj = event.get(key)
        if isinstance(obj, dict) and obj.get("kind") != "Status":
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                return meta
    return None


def has_annotation(event: dict[str, Any], key: str, value: str) -> bool:
    """The annotation on the audit event itself or on an object it carries."""
    annotations = event.get("annotations")
    if isinstance(annotations, dict) and annotations.get(key) == value:
        return True
    for _, meta in carried_objects(event):
        found = meta.get("annotations")
        if isinstance(found, dict) and found.get(key) == value:
            return True
    return False


def gitops_evidence(event: dict[str, Any], annotations: tuple[str, ...],
                    labels: tuple[str, ...], managers: frozenset[str]) -> str | None:
    """What shows that a GitOps tool manages the object the event carries, or None.

    Any of the given annotation or label keys with a non-empty value, or a field manager
    of that name in `metadata.managedFields`. The answer names the evidence, e.g.
    `annotation argocd.argoproj.io/tracking-id on responseObject`.
    """
    for where, meta in carried_objects(event):
        found = _keyed(meta.get("annotations"), annotations)
        if found:
            return f"annotation {found} on {where}"
        found = _keyed(meta.get("labels"), labels)
        if found:
            return f"label {found} on {where}"
        fields = meta.get("managedFields")
        if isinstance(fields, list) and managers:
            for entry in fields:
                manager = entry.get("manager") if isinstance(entry, dict) else None
                if isinstance(manager, str) and manager in managers:
                    return f"field manager {manager} on {where}"
    return None


def _keyed(mapping: Any, keys: tuple[str, ...]) -> str | None:
    if not isinstance(mapping, dict) or not keys:
        return None
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return key
    return None


# Every reason `invalid_reason` gives.
INVALID_REASONS = ("not_an_object", "missing_stage", "bad_stage", "unknown_stage",
                   "bad_objectRef", *(f"bad_objectRef_{key}" for key in (
                       "resource", "subresource", "namespace", "name")),
                   "bad_verb", "bad_user", "bad_username", "bad_annotations")


def invalid_reason(event: Any) -> str | None:
    """Why an event cannot be evaluated, or None when its shape is usable.

    Called only when the fast path failed or an event reaches rule evaluation, so the
    checks here cost nothing on the common path.
    """
    if not isinstance(event, dict):
        return "not_an_object"
    stage = event.get("stage")
    if stage is None:
        return "missing_stage"
    if not isinstance(stage, str):
        return "bad_stage"
    if stage not in FIRING_STAGES and stage not in QUIET_STAGES:
        return "unknown_stage"
    ref = event.get("objectRef")
    if ref is not None and not isinstance(ref, dict):
        return "bad_objectRef"
    if isinstance(ref, dict):
        for key in ("resource", "subresource", "namespace", "name"):
            value = ref.get(key)
            if value is not None and not isinstance(value, str):
                return f"bad_objectRef_{key}"
    if not isinstance(event.get("verb"), str):
        return "bad_verb"
    user = event.get("user")
    if user is not None and not isinstance(user, dict):
        return "bad_user"
    if isinstance(user, dict):
        name = user.get("username")
        if name is not None and not isinstance(name, str):
            return "bad_username"
    annotations = event.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        return "bad_annotations"
    return None
