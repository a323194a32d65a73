"""Rule out audit events from the few fields detection needs, without parsing the rest.

Nearly every audit event cannot match any rule, and detection can tell from five fields:
the stage, the verb, the user's name, whether someone is impersonated, and the object's
resource, subresource and namespace (`Detector.detect`'s fast path reads exactly these,
through the rule index). msgspec decodes just those from an event's bytes into a few small
objects and skips everything else — the objects a client sent, the annotations — checking
its syntax but building nothing. A decoder reads JSON as JSON, so the answer does not
depend on how a producer laid the event out: field order, escapes, whitespace, a repeated
key (the last one counts, as with orjson) and nested objects with the same keys are read
exactly as a full parse reads them.

`Prefilter` answers the skip reason detection would give, or None: "parse it". It answers
None whenever the fields are not what detection can settle from (a value of the wrong
type, an unknown stage, bytes that are not JSON): those events are parsed with orjson and
decided exactly as without the pre-filter. Items ruled out are counted under the same
skip reasons detection gives.

One difference remains, in counts only: msgspec does not check that strings it skips are
UTF-8, which orjson does. An event whose only fault is a string that is not UTF-8 in a
field no rule reads is counted as ruled out rather than as invalid.
"""

from __future__ import annotations

from typing import Any

import msgspec

from healert_webhook.audit import FIRING_STAGES, HUMAN_SYSTEM_USERS, QUIET_STAGES


class _User(msgspec.Struct):
    username: str | None = None


class _Ref(msgspec.Struct):
    resource: str | None = None
    namespace: str | None = None
    subresource: str | None = None


class _Fields(msgspec.Struct):
    """What detection's fast path reads of an event; absent fields are None."""

    stage: str | None = None
    verb: str | None = None
    user: _User | None = None
    impersonatedUser: Any = None
    objectRef: _Ref | None = None


_EVENT = msgspec.json.Decoder(_Fields)
_NO_REF = _Ref()


class Prefilter:
    """The part of a Detector's decision a few fields settle (see the module docstring)."""

    def __init__(self, detector: Any) -> None:
        self._by_resource, self._any = detector.index
        self._excluded = detector.excluded_namespaces

    def skip(self, raw: bytes | memoryview) -> str | None:
        """The skip reason for the one event in `raw`, or None: parse it.

        Ruled out means `raw` is exactly one JSON object: a piece of a body split at the
        wrong place is not, so it is parsed, fails, and the body is parsed whole.
        """
        try:
            fields = _EVENT.decode(raw)
        except Exception:  # not one JSON object, a field detection cannot
            # use, bytes that are not UTF-8 (some msgspec versions raise UnicodeDecodeError):
            # the full parse decides, and reports it
            return None
        return self.reason(fields)

    def reason(self, event: _Fields) -> str | None:
        """`Detector.detect`'s fast-path skip reasons, decided in its order, or None."""
        stage = event.stage
        if stage not in FIRING_STAGES:
            return "stage" if stage in QUIET_STAGES else None  # unknown: detection says
        ref = event.objectRef or _NO_REF
        subs, other_sub = self._by_resource.get(ref.resource, self._any)
        verbs, other_verb = subs.get(ref.subresource, other_sub)
        leaf = verbs.get(event.verb, other_verb)
        if leaf is None:
            return "no_rule"
        if event.verb is None:
            return None  # detection counts a missing verb as invalid
        if ref.namespace and ref.namespace in self._excluded:
            return "namespace"
        if leaf[1] and not event.impersonatedUser:
            username = event.user.username if event.user else None
            if not username or (username[:7] == "system:" and username not in HUMAN_SYSTEM_USERS):
                return "system_actor"
        return None
