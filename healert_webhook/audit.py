"""Tolerant helpers over parsed audit events (audit.k8s.io/v1 and v1beta1).

Events stay the plain dicts `orjson.loads` returns: no per-event model objects. These
helpers run only on the slow path (events that might match a rule, or that broke the fast
path), so they can afford to check every type.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

FIRING_STAGES = frozenset({"ResponseStarted", "ResponseComplete"})
QUIET_STAGES = frozenset({"RequestReceived", "Panic"})
# Usernames under system: that are people (admin kubeconfigs), not controllers.
HUMAN_SYSTEM_USERS = frozenset({"system:admin", "system:masters"})
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})$")


class BadDocument(ValueError):
    """A request body or file is JSON but not an audit Event, EventList or list of events."""


def batch_items(doc: Any) -> list[Any]:
    """The events of a parsed document: an EventList, a single Event, or a JSON array."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        items = doc.get("items")
        if doc.get("kind") == "EventList" or (items is not None and "auditID" not in doc):
            if not isinstance(items, list):
                if items is None:
                    return []
                raise BadDocument("EventList 'items' is not a list")
            return items
        return [doc]
    raise BadDocument(f"expected an object or an array, got {type(doc).__name__}")


def is_internal_actor(username: str) -> bool:
    """True for Kubernetes' own actors: `system:*` users other than admins, and nobody."""
    if not username:
        return True
    return username.startswith("system:") and username not in HUMAN_SYSTEM_USERS


def dedup_key(event: dict[str, Any], username: str, verb: str, rule: str) -> str:
    """The key that identifies one request's detection by one rule, across stages and resends.

    auditID alone is client-settable, so the request's time, verb, URI and user are part
    of the key too.
    """
    parts = (
        _text(event.get("auditID")),
        _text(event.get("requestReceivedTimestamp") or event.get("timestamp")),
        verb,
        _text(event.get("requestURI")),
        username,
        rule,
    )
    raw = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else repr(value))


def event_timestamp(event: dict[str, Any]) -> str | None:
    """The request's time in ISO 8601, if the event carries a well-formed one."""
    for key in ("requestReceivedTimestamp", "stageTimestamp", "timestamp"):
        value = event.get(key)
        if isinstance(value, str) and len(value) <= 40 and _TIMESTAMP.match(value):
            return value
    return None


def clean_text(value: str, limit: int) -> str:
    """Printable ASCII only, at most `limit` characters.

    Control and non-ASCII characters are written as backslash escapes, so a user name
    holding a newline or an ANSI escape cannot forge log lines or terminal output, and
    nothing is silently lost.
    """
    if not (value.isascii() and value.isprintable()):
        value = value[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return value


def impersonated_name(event: dict[str, Any]) -> str | None:
    """The user the request was made as, when the actor impersonated someone."""
    imp = event.get("impersonatedUser")
    if isinstance(imp, dict):
        name = imp.get("username")
        if isinstance(name, str) and name:
            return name
    return None


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
