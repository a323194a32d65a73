"""Reading one webhook body: how to read it, the memory it may take, its candidate events.

A body is an audit EventList (or an Event, or a JSON array of events). batches.py says how
it is read — whole by the msgspec field pass (small events) or by simdjson, by simdjson
in groups of whole events, or parsed whole by orjson — and what that costs in memory; a
`Reservation` holds that much of the in-flight budget for the request, growing when a
large candidate needs more. `read` gives the pipeline the candidate events of a body
(the field pass or the pre-filter rules out the rest without a parse); `parse_body`
parses a body whole, the careful way for what neither reader takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import orjson

from healert_webhook import audit, batches, fieldpass
from healert_webhook.budget import BodyBudget
from healert_webhook.pipeline import Pipeline, Read, Rules
from healert_webhook.prefilter import Array, NeedsMore, Object, Unreadable, parse
from healert_webhook.records import Evaluation

# Bodies up to this size are measured on the event loop: batches.plan reads nothing of
# them. A larger body takes passes over all of it: a worker thread does those.
ON_LOOP_BYTES = 4 * 1024 * 1024
_T = TypeVar("_T")


class BadBody(ValueError):
    """A webhook body that is not an audit EventList, Event or array; `reason` is a label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TooCostly(Exception):
    """Reading the body would take more memory than the whole budget: `cost` bytes."""

    def __init__(self, cost: int, limit: int) -> None:
        super().__init__(cost)
        self.cost, self.limit = cost, limit


class Busy(Exception):
    """The budget has no room for this body now (others are being read): retry later."""


class Reservation:
    """The share of the in-flight memory budget one request holds; given back at the end.

    It grows as the request learns what its body costs: the declared length, then the
    bytes as they arrive, then what reading the body takes, then a large candidate's
    parse. A share that cannot be had within the budget's wait raises Busy; one larger
    than the whole budget raises TooCostly.
    """

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    async def take(self, size: int) -> None:
        """Hold `size` bytes more, or Busy. Growing a share already held goes before
        requests that hold none (see BodyBudget)."""
        if not await self.budget.take(size, holding=self.held > 0):
            raise Busy
        self.held += size

    async def grow_to(self, cost: int) -> None:
        """Hold `cost` bytes in all (nothing when already held), or TooCostly / Busy."""
        if cost > self.budget.limit:
            raise TooCostly(cost, self.budget.limit)
        if cost > self.held:
            await self.take(cost - self.held)

    async def release(self) -> None:
        """Give everything back."""
        held, self.held = self.held, 0
        await self.budget.give(held)


async def measure(func: Callable[[bytes], _T], body: bytes, executor: Executor) -> _T:
    """`func(body)`, on a worker thread for a large body (measuring one reads it whole)."""
    if len(body) <= ON_LOOP_BYTES:
        return func(body)
    return await asyncio.get_running_loop().run_in_executor(executor, func, body)


def read(body: bytes, plan: batches.Reading, rules: Rules, most: int,
         allowance: int | None = None) -> Read:
    """The candidate events of a body read as `plan` says (the field pass or simdjson),
    for `rules`.

    Consuming the events raises TooManyItems past `most` events (before any is evaluated,
    unless the body is read in groups), BadBody for a document that is no batch of
    events, Unreadable when its reader does not take a document of it (then it must be
    parsed whole), and NeedsMore when a candidate needs more memory than `allowance`
    (see Prefilter.candidates).
    """
    found = Read(rules, ())
    found.events = _candidates(body, plan, most, found, allowance)
    return found


def evaluate(pipeline: Pipeline, body: bytes, plan: batches.Reading, source: str, most: int,
             *, allowance: int | None = None, received: float | None = None
             ) -> Evaluation | None:
    """The pipeline's evaluation of the body's candidates, read by the active rules; None
    when its reader does not take the body (then it must be parsed whole). Raises as
    consuming `read`'s events does."""
    try:
        return pipeline.evaluate(read(body, plan, pipeline.rules, most, allowance), source,
                                 received)
    except Unreadable:
        return None


def _candidates(body: bytes, plan: batches.Reading, most: int, found: Read,
                allowance: int | None) -> Iterator[dict[str, Any]]:
    prefilter = found.rules.prefilter
    if plan.fields:
        yield from _field_pass(body, most, found, allowance)
        return
    if plan.groups is None:
        doc = parse(body)
        try:
            items = audit.batch_items(doc, Object, Array)
        except audit.BadDocument as exc:
            raise BadBody(f"not an audit EventList, Event or array: {exc}",
                          "bad_shape") from None
        if len(items) > most:
            raise batches.TooManyItems(len(items))
        yield from prefilter.candidates(items, found.ruled_out, found.bad, 0, allowance)
        return
    seen = 0
    for index, span in enumerate(plan.groups):
        group = parse(batches.group_text(body, span))
        if group.__class__ is not Array:
            raise Unreadable("a group is no array")
        if seen + len(group) > most:
            del group
            raise batches.TooManyItems(seen + _count(body, plan.groups[index:]))
        start, seen = seen, seen + len(group)
        yield from prefilter.candidates(group, found.ruled_out, found.bad, start, allowance)
        del group


def _field_pass(body: bytes, most: int, found: Read, allowance: int | None
                ) -> Iterator[dict[str, Any]]:
    """The candidates of a body read by the msgspec field pass, parsed one at a time by
    orjson from their own bytes (no copy, no re-serialisation); the rest counted once for
    the whole body. Raises as `read` says."""
    try:
        total, candidates = found.rules.prefilter.fields.sort_body(body, most,
                                                                   found.ruled_out)
    except fieldpass.Unreadable as exc:  # not JSON, or not UTF-8: parsed whole
        raise Unreadable(str(exc)) from None
    except audit.BadDocument as exc:
        raise BadBody(f"not an audit EventList, Event or array: {exc}", "bad_shape") from None
    if total > most:
        raise batches.TooManyItems(total)
    loads, bad = orjson.loads, found.bad
    for index, item in candidates:
        if allowance is not None and len(item) > batches.SMALL_CANDIDATE:
            need = batches.estimate(bytes(item))
            if need > allowance:
                raise NeedsMore(need - allowance)
        try:
            event = loads(memoryview(item))
        except orjson.JSONDecodeError:  # a number orjson does not take (`1e400`)
            bad.append((index, "bad_json"))
            continue
        if event.__class__ is dict:
            yield event
        else:
            bad.append((index, "not_an_object"))


def _count(body: bytes, spans: Sequence[batches.Span]) -> int:
    """How many events the groups hold (for the answer to a batch that is too large)."""
    total = 0
    for span in spans:
        group = parse(batches.group_text(body, span))
        total += len(group) if group.__class__ is Array else 0
        del group
    return total


def parse_body(body: bytes) -> Sequence[Any]:
    """The items of a webhook body parsed whole: an EventList, an Event or a JSON array.

    Raises BadBody for a body that is not one of those.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody(f"body is not valid JSON: {exc}", "bad_json") from None
    try:
        return audit.batch_items(doc)
    except audit.BadDocument as exc:
        raise BadBody(f"not an audit EventList, Event or array: {exc}", "bad_shape") from None
