"""budget.py: the in-flight memory budget shared by the webhook's requests."""

from __future__ import annotations

import asyncio
import time

from healert_webhook.budget import BodyBudget


def test_a_share_is_given_at_once_while_there_is_room() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait=0.05)
        assert await budget.take(60) and await budget.take(40)
        assert budget.used == 100
        started = time.monotonic()
        assert not await budget.take(1)  # full: refused after its wait, not at once
        assert time.monotonic() - started >= 0.04
        await budget.give(100)
        assert budget.used == 0

    asyncio.run(scenario())


def test_a_waiting_share_is_given_as_soon_as_room_is_made() -> None:
    async def scenario() -> float:
        budget = BodyBudget(100, wait=5.0)
        assert await budget.take(90)
        waiting = asyncio.ensure_future(budget.take(50))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no room yet
        started = time.monotonic()
        await budget.give(90)
        assert await waiting
        assert budget.used == 50
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0  # woken by the give, not by its 5 s wait


def test_a_share_larger_than_the_whole_budget_is_never_given() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait=0.05)
        assert not await budget.take(101)
        assert budget.used == 0

    asyncio.run(scenario())
