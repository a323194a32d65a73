"""The in-flight memory budget's fairness, on the budget itself and on the real agent.

The apiserver resends a refused batch a bounded number of times (a 503 with Retry-After
is retried within an attempt, then 5 attempts with backoff) and then drops it for good.
So a batch that is refused every time because smaller ones keep taking the budget it
waits for is a lost batch.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx

from healert_webhook import batches
from healert_webhook.budget import BodyBudget
from healert_webhook.sources.body import Reservation

from support.agent import JSON, Agent, MiB, serve_args
from support.events import event_list, noise_event


def test_a_waiting_share_is_not_passed_by_smaller_ones_that_come_after_it() -> None:
    """Two holders of 30 each keep replacing themselves (give, then take again at once);
    a share of 60 waits. Before, each new small share was given at once (it fit), so the
    large one never saw 60 free and was refused after its wait, however often retried.
    Shares are given in the order they were asked for: the large one gets the room the
    next give makes, and the small ones wait behind it. The budget is never exceeded."""

    async def scenario() -> tuple[bool, int, int]:
        budget = BodyBudget(100, wait=1.0)
        highest = 0
        stop = asyncio.Event()
        served = 0

        async def small(delay: float) -> None:
            nonlocal highest, served
            await asyncio.sleep(delay)
            while not stop.is_set():
                if await budget.take(30):
                    highest = max(highest, budget.used)
                    served += 1
                    await asyncio.sleep(0.02)
                    await budget.give(30)  # ...and straight back in line, no pause

        smalls = [asyncio.ensure_future(small(0.0)), asyncio.ensure_future(small(0.01))]
        await asyncio.sleep(0.05)
        got = await budget.take(60)  # the large batch: waits up to 1 s
        highest = max(highest, budget.used)
        if got:
            await budget.give(60)
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*smalls)
        return got, highest, served

    got, highest, served = asyncio.run(scenario())
    assert got, "the large share was refused while smaller ones kept taking the budget"
    assert highest <= 100  # the memory bound holds
    assert served > 4  # the small ones were served too


def test_a_holder_grows_past_a_newcomer_that_waits() -> None:
    """A request that already holds part of the budget and must grow to finish goes
    before requests that hold nothing yet: were it queued behind a newcomer waiting for
    the memory it holds, both would wait until one is refused."""

    async def scenario() -> tuple[bool, bool]:
        budget = BodyBudget(100, wait=0.5)
        share = Reservation(budget)
        await share.take(50)
        newcomer = asyncio.ensure_future(budget.take(60))
        await asyncio.sleep(0.05)
        assert not newcomer.done()
        await share.grow_to(90)  # Busy would be raised if it had to wait behind it
        grown = share.held == 90
        await share.release()
        return grown, await newcomer

    grown, newcomer = asyncio.run(scenario())
    assert grown and newcomer


def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    """A share refused after its wait (or cancelled: the body timed out) is no longer in
    line: the shares behind it are given what fits, and a share granted as its wait was
    cancelled is given back."""

    async def scenario() -> int:
        budget = BodyBudget(100, wait=0.2)
        assert await budget.take(50)
        assert not await budget.take(60)  # refused after its wait...
        assert await budget.take(40)  # ...and then no longer ahead of anyone
        waiting = asyncio.ensure_future(budget.take(60))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await budget.give(90)
        await asyncio.sleep(0.05)
        return budget.used

    assert asyncio.run(scenario()) == 0


# -- the real agent ---------------------------------------------------------------------

LIMIT = 60 * MiB
SMALL_SENDERS = 12
TRICKLE_PIECES = 16
TRICKLE_PAUSE = 0.06  # a small body takes about a second to arrive


def _padded(count: int, pad: int) -> bytes:
    events = []
    for i in range(count):
        event = noise_event(i)
        event["annotations"] = {"note": "p" * pad}
        events.append(event)
    return event_list(events)


class _Trickler:
    """Batches of about 1 MiB sent over about a second each, one after another on a
    keep-alive connection (resent at once when refused), from several threads."""

    def __init__(self, port: int, body: bytes) -> None:
        self.port, self.body = port, body
        self.codes: Counter[int] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(SMALL_SENDERS)]

    def _pieces(self) -> Iterator[bytes]:
        step = len(self.body) // TRICKLE_PIECES + 1
        for start in range(0, len(self.body), step):
            yield self.body[start:start + step]
            time.sleep(TRICKLE_PAUSE)

    def _run(self, index: int) -> None:
        time.sleep(index * TRICKLE_PAUSE * TRICKLE_PIECES / SMALL_SENDERS)  # staggered
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/audit", body=self._pieces(),
                             headers={**JSON, "content-length": str(len(self.body))})
                answer = conn.getresponse()
                answer.read()
                self.codes[answer.status] += 1
                if answer.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                self.codes[0] += 1
                conn.close()
        conn.close()

    def __enter__(self) -> _Trickler:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_a_large_batch_is_taken_while_smaller_ones_keep_coming(tmp_path: Path) -> None:
    """The real agent with a 60 MiB budget; twelve senders keep ~1 MiB batches arriving
    (each holds its size while it arrives, then ~23 MiB for a moment to be read); a
    3.3 MiB batch needs ~55 MiB to be read, which it gets only when most of the small
    ones are out of the budget at once. Before, each small batch that left was replaced
    at once by the next, so the large batch was answered 503 on every try, as the
    apiserver would resend it, until it gave up and dropped it."""
    small = _padded(300, 3000)
    large = _padded(1000, 3000)
    small_cost = batches.plan(small)[1]
    large_cost = batches.plan(large)[1]
    # The premises: each fits alone; the large one does not fit beside the small ones
    # even when one of them has just left; a small one's reading fits beside them all.
    assert large_cost <= LIMIT
    assert LIMIT - len(large) - (SMALL_SENDERS - 1) * len(small) < large_cost - len(large)
    assert LIMIT - len(large) - SMALL_SENDERS * len(small) >= small_cost - len(small)
    agent = Agent(serve_args(), tmp_path, env={
        "HEALERT_MAX_INFLIGHT_BYTES": str(LIMIT), "HEALERT_MAX_BODY_BYTES": str(4 * MiB)})
    try:
        port, _ops = agent.ports()
        codes: list[int] = []
        with _Trickler(port, small) as smalls:
            time.sleep(2.0)  # every sender has a batch arriving
            with httpx.Client(timeout=30) as client:
                for _ in range(4):  # a few of the apiserver's resends
                    answer = client.post(f"http://127.0.0.1:{port}/audit", content=large,
                                         headers=JSON)
                    codes.append(answer.status_code)
                    if answer.status_code == 200:
                        break
                    time.sleep(float(answer.headers.get("retry-after", "1")))
        assert codes[-1] == 200, f"the large batch was answered {codes}; small: {smalls.codes}"
        assert smalls.codes[200] >= SMALL_SENDERS  # and the small ones were taken too
        assert agent.alive(), agent.output()[-3000:]
        assert agent.stop() == 0
    finally:
        agent.kill()
