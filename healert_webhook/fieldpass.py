"""Detection's fast path, decided from the five fields of an event's JSON read by msgspec.

Nearly every audit event matches no rule, and `Index.rule_out` tells which from five
fields: the stage, the verb, the user (internal or not, and whether someone is
impersonated), and the object reference's resource, subresource and namespace. Here
msgspec reads exactly those: a `msgspec.json.Decoder` of a Struct that holds only them
parses the event's JSON, skips everything else without building a Python object of it,
and hands over the five values. An event costs about a microsecond read this way,
against two to three for simdjson's reading through Python proxies (prefilter.py); see
docs/performance.md. `FieldPass.split` reads a webhook body into its items' bytes the
same way, so each item can be decided, and parsed with orjson when it is a candidate,
on its own. The tail decides its lines here (`Prefilter.skip`), and the webhook the
bodies of small events (`sort_body`, sources/body.py).

An optional native reader of the same fields slots in (`LineReader`, `BodyReader`,
`LinesReader`): its values are decided as msgspec's are, and whatever it is not sure of is
read here. The body and lines readers take the caches below and answer every event whose
combination is settled themselves, so such an event costs no Python code.

The decision itself is `Index.rule_out`'s, cached: it depends on nothing but the stage,
verb, resource, subresource and namespace, and, when every candidate rule ignores system
actors, on whether the user is internal and impersonates nobody. The first event of each
combination asks `rule_out` with an internal and with a person's user: the same answer
settles the combination for every user, two answers are kept and the event's own user
chooses. A value `rule_out` could not decide from (a list for a verb, a user that is a
string) is passed to `rule_out` itself, so the answer is its own for every event. Should
`rule_out` ever read another field, `_Fields` and the cache key must hold it too
(tests/test_fieldpass.py compares the two over hostile events).

Exactness: a parser reads the event, so its layout does not matter (field order,
whitespace, escapes, strings holding the very bytes of a field, nested objects with the
same keys, objects that look like other events). A field written twice is read as orjson
reads it, the last one. What msgspec refuses (bad syntax, escapes, control characters,
nesting deeper than it goes) is read by orjson instead, which refuses it too but for
nesting between the two parsers' limits. msgspec checks UTF-8 only in the strings it
decodes, so the bytes are checked first (an ASCII test, or a strict decode when they are
not ASCII): an event orjson refuses for its UTF-8 is never ruled out. So for every event
orjson reads, the answer is `rule_out`'s on orjson's reading of it; for what orjson
refuses, None (the full parse then says why), with one exception: a number out of a
double's range (`1e400`) in a part no decision reads is valid JSON to msgspec, which does
not convert what it skips, and an error to orjson. Such an event is decided by its five
fields where orjson calls it unreadable; neither gives a friction event. (The apiserver
writes a client's raw patch into `requestObject` as it came, so a person can put one
there.)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec
import orjson

from healert_webhook.audit import BadDocument, is_internal_actor
from healert_webhook.index import Index, Undecidable
from healert_webhook.nativescan import native

# The combinations kept; when full the cache starts over (a stream of made-up
# namespaces cannot grow it without bound).
CACHE_ENTRIES = 4096
# A combination whose strings are longer than this together is decided, never kept.
CACHE_KEY_CHARS = 512
_INTERNAL = {"username": "system:fieldpass"}  # an internal actor, for settling
_PERSON = {"username": "fieldpass"}  # someone who is not


class Unreadable(Exception):
    """A body msgspec does not read as JSON (the full parse decides what it is)."""


class _User(msgspec.Struct, gc=False):
    username: Any = None


class _Ref(msgspec.Struct, gc=False, frozen=True):
    # frozen: hashable, so the cache keys on it whole (its fields compared with ==)
    resource: Any = None
    subresource: Any = None
    namespace: Any = None


# Any JSON value but an object: a user or objectRef of another type is read, not refused.
_NotObject = None | bool | int | float | str | list[Any]


class _Fields(msgspec.Struct, gc=False):
    """The fields `Index.rule_out` reads, of any value; every other one is skipped unread."""

    stage: Any = None
    verb: Any = None
    user: _User | _NotObject = None
    impersonatedUser: Any = None
    objectRef: _Ref | _NotObject = None


# The apiserver's stages and verbs. Read as these, a value is the one string object of the
# type (no string made, its hash kept); any other value is read again as `_Fields`.
_Stage = Literal["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]
_Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete",
                "deletecollection", "post", "put", "head", "options", "proxy"]


class _KnownFields(_Fields, gc=False):
    """`_Fields` whose stage and verb are among the apiserver's (the usual event)."""

    stage: _Stage | None = None
    verb: _Verb | None = None


class _Body(msgspec.Struct, gc=False):
    """What `audit.batch_items` looks at in a body that is an object."""

    kind: Any = None
    auditID: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    items: list[msgspec.Raw] | dict[str, Any] | str | float | int | bool | None = None


_read_fields = msgspec.json.Decoder(_Fields).decode
_read_known_fields = msgspec.json.Decoder(_KnownFields).decode
_read_body = msgspec.json.Decoder(_Body | list[msgspec.Raw]).decode
Answer = str | None  # a skip reason, or None: parse it
# What a combination settles: one answer for every user, or one for an internal actor who
# impersonates nobody and one for anyone else.
Settled = Answer | tuple[Answer, Answer]
Item = bytes | msgspec.Raw
# What a native reader gives for one event (nativescan.py): the stage, the verb, the
# object reference's resource, subresource and namespace, the user's name, each a string
# or None where the event has none, and whether someone is impersonated. The first five
# are what a decision is cached by. A reader answers None ("not sure, read it the pure
# way") for anything else: a value of another type, bad UTF-8, a syntax error.
Values = tuple[Any, Any, Any, Any, Any, Any, Any]
LineReader = Callable[[bytes], "Values | None"]
# For a body, given the cache of decisions by values and the cache of internal names:
# (answers, spans), one answer an item (its decision taken from the caches: a reason, or
# None for a candidate; its values where the caches do not settle it; False when not sure
# of its values: read the pure way) and the (index, start, end) byte bounds of every item
# whose answer is not a reason; or None for the whole body (then `split` reads it).
BodyReader = Callable[[bytes, "dict[tuple[Any, ...], Settled]", "dict[str, bool]"],
                      "tuple[list[Any], list[tuple[int, int, int]]] | None"]
# For a block of log lines, each ended by a newline, and the longest line to read: the
# same answers one a line (False also for a line over that length), or None.
LinesReader = Callable[["bytes | memoryview", "dict[tuple[Any, ...], Settled]",
                        "dict[str, bool]", int],
                       "tuple[list[Any], list[tuple[int, int, int]]] | None"]
# A line `sort_lines` does not rule out: its index, its bounds in the block, and whether
# it is a candidate to parse (else it is read the careful way: `reason`, then a parse).
OpenLine = tuple[int, int, int, bool]
_DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def is_utf8(data: bytes) -> bool:
    """True when `data` is valid UTF-8 (as strict as orjson: no surrogates, no overlong
    forms); ASCII is checked without decoding."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class FieldPass:
    """`Index.rule_out`'s skip reason for events read from their JSON (module docstring).

    One per rule index: the cached decisions belong to its rules. Safe to share between
    threads (a decision computed twice at once is the same decision).
    """

    def __init__(self, index: Index, line_reader: LineReader | None = None,
                 body_reader: BodyReader | None = None,
                 lines_reader: LinesReader | None = None) -> None:
        self._rule_out = index.rule_out
        self._settled: dict[tuple[Any, ...], Settled] = {}
        self._lock = threading.Lock()
        # Optional native readers of the same fields (see `Values`); the pure path
        # answers whatever they are not sure of.
        self._line_reader = line_reader
        self._body_reader = body_reader
        self._lines_reader = lines_reader
        self._by_values: dict[tuple[Any, ...], Settled] = {}

    @classmethod
    def for_index(cls, index: Index) -> FieldPass:
        """The field pass the sources use: with the native scanner's readers where it
        is built and not turned off (nativescan.py), else the pure one."""
        if native is None:
            return cls(index)
        return cls(index, line_reader=native.scan_line, body_reader=native.decide_body,
                   lines_reader=native.decide_lines)

    def reason(self, item: Item) -> Answer:
        """The skip reason `Index.rule_out` gives the event `item` holds (`stage`,
        `no_rule`, `namespace`, `system_actor`), or None: parse it (it may match, it is
        not an object, or its fields are not what the fast path decides on).

        `item` is one event's JSON: bytes (a log line, checked for UTF-8 here), or a
        `msgspec.Raw` from `split`, whose body was checked.
        """
        if item.__class__ is bytes:
            if self._line_reader is not None:
                values = self._line_reader(item)
                if values is not None:
                    return self._decide_values(values)
            if not item.isascii() and not is_utf8(item):
                return None
        fields: _Fields
        try:
            fields = _read_known_fields(item)
        except msgspec.ValidationError:  # another stage or verb, or no object at all
            try:
                fields = _read_fields(item)
            except msgspec.ValidationError:  # an array or a value, no event
                return None
            except (msgspec.DecodeError, RecursionError):
                return self._parsed(item)
        except (msgspec.DecodeError, RecursionError):
            return self._parsed(item)
        return self._decide(fields)

    def split(self, body: bytes, strict: bool = False) -> Sequence[Item]:
        """The items of a webhook body read as `audit.batch_items` reads a parsed one
        (an EventList, an array of events, or one Event), each as the bytes of its JSON.

        Items are `msgspec.Raw` views into `body`; an item whose bytes are not UTF-8 is
        a copy (bytes), which `reason` checks and leaves to the full parse. Raises
        Unreadable when msgspec does not read the body as JSON, or when the bytes that
        are not UTF-8 lie outside every item (orjson refuses the body whole), or
        `strict` and any byte is not UTF-8 (the webhook refuses such a body whole, as
        orjson does); BadDocument for JSON that is no batch of events.
        """
        try:
            doc = _read_body(body)
        except msgspec.ValidationError:
            raise _no_batch(body) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise Unreadable(str(exc)) from None
        if isinstance(doc, list):
            items: Sequence[Item] = doc
        elif doc.kind == "EventList" or (doc.items is not None and doc.auditID is msgspec.UNSET):
            if not isinstance(doc.items, list):
                if doc.items is None:
                    return []
                raise BadDocument("EventList 'items' is not a list")
            items = doc.items
        else:
            items = [body]  # one event: `reason` checks its bytes
        if is_utf8(body):
            return items
        if strict:
            raise Unreadable("bytes that are not UTF-8")
        return items if items[0] is body else _copies_of_bad_items(items)

    def sort(self, items: Sequence[Item], ruled_out: Counter[str]) -> list[tuple[int, Item]]:
        """The candidates among `items` (from `split`), each with its index: those
        `reason` does not rule out. The others are counted in `ruled_out` under their
        reasons, once for the whole batch."""
        read, decide, reason = _read_known_fields, self._decide, self.reason
        settled, internal_of = self._settled, _internal_of
        answers: list[Answer] = []
        add = answers.append
        for item in items:
            if item.__class__ is bytes:  # not UTF-8, or a whole body: the careful way
                add(reason(item))
                continue
            try:
                fields = read(item)
            except _DECODE_ERRORS:
                add(reason(item))
                continue
            # `_decide` inline for a combination already settled and a user whose name
            # is a string (nearly every event); anything else goes through it
            try:
                known = settled[(fields.stage, fields.verb, fields.objectRef)]
            except (KeyError, TypeError):
                add(decide(fields))
                continue
            if known.__class__ is not tuple:
                add(known)  # type: ignore[arg-type]  # a reason or None, not a pair
                continue
            user = fields.user
            name = user.username if user.__class__ is _User else None
            if name.__class__ is not str:
                add(decide(fields))
                continue
            internal = internal_of.get(name)
            if internal is None:
                internal = _remember_internal(name)
            add(known[0] if internal and not fields.impersonatedUser else known[1])
        if not self._count(answers, ruled_out):
            return []
        return [(index, items[index]) for index, answer in enumerate(answers)
                if answer is None]

    def sort_body(self, body: bytes, most: int, ruled_out: Counter[str]
                  ) -> tuple[int, list[tuple[int, Item]]]:
        """The number of items of a webhook body, and its candidates as `sort` gives
        them; nothing is decided when there are more than `most` items. A body reader
        (native) is asked first; otherwise, or when it is not sure, `split` reads the
        body strictly (it raises as `split` does)."""
        found = (self._body_reader(body, self._by_values, _internal_of)
                 if self._body_reader is not None else None)
        if found is None:
            items = self.split(body, strict=True)
            return len(items), ([] if len(items) > most else self.sort(items, ruled_out))
        answers, spans = found
        if len(answers) > most:
            return len(answers), []
        view = memoryview(body)
        bounds: dict[int, slice] = {}
        for index, start, end in spans:  # candidates, and what the caches left open
            bounds[index] = where = slice(start, end)
            if answers[index] is False:
                answers[index] = self.reason(msgspec.Raw(view[where]))
        self._settle_open(answers, spans)
        self._count(answers, ruled_out)
        return len(answers), [(index, msgspec.Raw(view[where]))
                              for index, where in bounds.items() if answers[index] is None]

    def sort_lines(self, block: bytes | memoryview, longest: int, ruled_out: Counter[str]
                   ) -> tuple[int, list[OpenLine]] | None:
        """The number of log lines in `block` (each ended by a newline) and, in order,
        those not ruled out (`OpenLine`; a line longer than `longest` is never a
        candidate); the others are counted in `ruled_out` under their reasons, once for
        the block. None when there is no lines reader (native) or it is not sure of the
        block: then each line goes through `reason`."""
        found = (self._lines_reader(block, self._by_values, _internal_of, longest)
                 if self._lines_reader is not None else None)
        if found is None:
            return None
        answers, spans = found
        self._settle_open(answers, spans)
        self._count(answers, ruled_out)
        return len(answers), [(index, start, end, answers[index] is None)
                              for index, start, end in spans
                              if answers[index] is None or answers[index] is False]

    def _settle_open(self, answers: list[Any], spans: list[tuple[int, int, int]]) -> None:
        """Decide the items a native reader left open with their values (the caches did
        not hold what they needed); a candidate (None) and an item not read (False) stay."""
        for index, _start, _end in spans:
            answer = answers[index]
            if answer.__class__ is tuple:  # its values
                answers[index] = self._decide_values(answer)

    @staticmethod
    def _count(answers: list[Any], ruled_out: Counter[str]) -> bool:
        """Count the skip reasons among `answers` in `ruled_out`, once for the whole batch
        (not one update an event); True when there is a candidate (None) among them.
        False, an item left to be read the careful way, is no reason."""
        tally = Counter(answers)  # counted in C
        candidates = tally.pop(None, 0)
        tally.pop(False, 0)
        ruled_out.update(tally)
        return bool(candidates)

    def _decide_values(self, values: Values) -> Answer:
        """`_decide` for a native reader's values, cached by their first five (no Struct
        built once a combination is settled)."""
        key = values[:5]
        try:
            settled = self._by_values[key]
        except KeyError:
            settled = self._settled_for(fields_of(values))
            self._keep(self._by_values, key, settled, key)
        if settled.__class__ is not tuple:
            return settled  # type: ignore[return-value]  # a reason or None
        name = values[5]
        internal = True if name is None else _internal_of.get(name)  # None: no name
        if internal is None:
            internal = _remember_internal(name)
        pair: tuple[Answer, Answer] = settled
        return pair[0] if internal and not values[6] else pair[1]

    def _decide(self, fields: _Fields) -> Answer:
        ref = fields.objectRef
        if ref is not None and ref.__class__ is not _Ref:
            return self._exact(fields)
        key = (fields.stage, fields.verb, ref)
        try:
            settled = self._settled[key]
        except KeyError:
            settled = self._settle(key, fields)
        except TypeError:  # a list or an object where a name belongs
            return self._exact(fields)
        if not isinstance(settled, tuple):
            return settled
        user = fields.user
        if isinstance(user, _User):
            name = user.username
            if isinstance(name, str):
                internal = _internal_of.get(name)
                if internal is None:
                    internal = _remember_internal(name)
            elif not name:
                internal = True  # no name: a failed authentication
            else:
                return self._exact(fields)
        elif not user:
            internal = True
        else:
            return self._exact(fields)
        return settled[0] if internal and not fields.impersonatedUser else settled[1]

    def _settle(self, key: tuple[Any, ...], fields: _Fields) -> Settled:
        """The decision for this combination, kept by `key` (see `_settled_for`)."""
        settled = self._settled_for(fields)
        ref = fields.objectRef
        parts = [fields.stage, fields.verb]
        if isinstance(ref, _Ref):
            parts += [ref.resource, ref.subresource, ref.namespace]
        self._keep(self._settled, key, settled, parts)
        return settled

    def _settled_for(self, fields: _Fields) -> Settled:
        """The decision for this combination: a reason or None for every user, or the
        pair (for an internal actor impersonating nobody, for anyone else)."""
        event = _stand_in(fields)
        event["impersonatedUser"] = None
        event["user"] = _INTERNAL
        internal = self._answer(event)
        event["user"] = _PERSON
        person = self._answer(event)
        return internal if internal == person else (internal, person)

    def _keep(self, cache: dict[tuple[Any, ...], Settled], key: tuple[Any, ...],
              settled: Settled, parts: Sequence[Any]) -> None:
        """Keep a decision unless the strings it is keyed by are too long together; a
        full cache starts over."""
        if sum(len(part) for part in parts if isinstance(part, str)) <= CACHE_KEY_CHARS:
            with self._lock:
                if len(cache) >= CACHE_ENTRIES:
                    cache.clear()
                cache[key] = settled

    def _parsed(self, item: Item) -> Answer:
        """What msgspec refuses, as orjson reads it: almost always refused too (None),
        but msgspec's nesting limit is below orjson's."""
        try:
            event = orjson.loads(memoryview(item))
        except orjson.JSONDecodeError:
            return None
        return self._answer(event) if isinstance(event, dict) else None

    def _exact(self, fields: _Fields) -> Answer:
        """`rule_out` on the event's own values, for what the cache does not key on."""
        return self._answer(_stand_in(fields))

    def _answer(self, event: dict[str, Any]) -> Answer:
        try:
            found = self._rule_out(event)
        except Undecidable:
            return None
        return found if isinstance(found, str) else None


# Whether a user name is an internal actor's, kept for the names seen (service accounts,
# nodes, controllers: a few hundred in a cluster); cleared when full.
_internal_of: dict[str, bool] = {}
NAMES_KEPT = 4096


def _remember_internal(name: str) -> bool:
    internal = is_internal_actor(name)
    if len(name) <= CACHE_KEY_CHARS:
        if len(_internal_of) >= NAMES_KEPT:
            _internal_of.clear()
        _internal_of[name] = internal
    return internal


def fields_of(values: Values) -> _Fields:
    """A native reader's values (see `Values`) as the Struct the pure path decodes."""
    stage, verb, resource, subresource, namespace, username, impersonated = values
    return _Fields(stage, verb, _User(username), impersonated,
                   _Ref(resource, subresource, namespace))


def _no_batch(body: bytes) -> Exception:
    """Why a body `_read_body` refused as it is typed is no batch: BadDocument naming the
    value's type as orjson does, or Unreadable for an object or array (a number out of
    range where the batch's shape is read) and what orjson does not read: the whole
    parse decides those."""
    if body.lstrip()[:1] in (b"{", b"["):
        return Unreadable("a value out of range in the batch's shape")
    try:
        value = orjson.loads(body)  # a scalar: as large as the body at most
    except orjson.JSONDecodeError as exc:
        return Unreadable(str(exc))
    return BadDocument(f"expected an object or an array, got {type(value).__name__}")


def _stand_in(fields: _Fields) -> dict[str, Any]:
    """The event as `rule_out` reads it: the five fields, objects as dicts."""
    ref, user = fields.objectRef, fields.user
    return {
        "stage": fields.stage, "verb": fields.verb,
        "user": {"username": user.username} if isinstance(user, _User) else user,
        "impersonatedUser": fields.impersonatedUser,
        "objectRef": {"resource": ref.resource, "subresource": ref.subresource,
                      "namespace": ref.namespace} if isinstance(ref, _Ref) else ref,
    }


def _copies_of_bad_items(items: Sequence[Item]) -> list[Item]:
    """The items of a body that is not UTF-8: those that are not either, as bytes."""
    out: list[Item] = []
    bad = 0
    for item in items:
        data = bytes(item)
        if is_utf8(data):
            out.append(item)
        else:
            out.append(data)
            bad += 1
    if not bad:
        raise Unreadable("bytes that are not UTF-8 outside the events")
    return out
