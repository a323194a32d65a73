"""sources/body.py: reading one webhook body, and the memory reservation it holds."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from healert_webhook.budget import BodyBudget
from healert_webhook.sources.body import BadBody, Busy, Reservation, TooCostly, parse_body

from support.events import exec_event


def test_parse_body_accepts_the_three_shapes_and_names_what_is_wrong() -> None:
    item = exec_event(1)
    assert parse_body(orjson.dumps({"kind": "EventList", "items": [item]})) == [item]
    assert parse_body(orjson.dumps(item)) == [item]
    assert parse_body(orjson.dumps([item, item])) == [item, item]
    with pytest.raises(BadBody) as bad_json:
        parse_body(b'{"kind": "EventList", "items": [')
    assert bad_json.value.reason == "bad_json"
    with pytest.raises(BadBody) as bad_shape:
        parse_body(b'"just a string"')
    assert bad_shape.value.reason == "bad_shape"




def test_a_reservation_grows_to_what_a_body_costs_and_gives_all_of_it_back() -> None:
    async def scenario() -> None:
        budget = BodyBudget(1000, wait=0.05)
        share = Reservation(budget)
        await share.take(300)  # the declared length
        await share.grow_to(200)  # already held: nothing more is taken
        assert (share.held, budget.used) == (300, 300)
        await share.grow_to(700)  # what reading the body takes
        assert (share.held, budget.used) == (700, 700)
        other = Reservation(budget)
        with pytest.raises(Busy):  # no room while the first holds its share
            await other.take(400)
        with pytest.raises(TooCostly) as costly:
            await other.grow_to(1001)  # more than the whole budget: it could never fit
        assert (costly.value.cost, costly.value.limit) == (1001, 1000)
        await share.release()
        assert (share.held, budget.used) == (0, 0)
        await other.take(400)  # room again
        await other.release()
        assert budget.used == 0

    asyncio.run(scenario())
