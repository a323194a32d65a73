"""SIGKILL of the `serve` process under load, at random points, then restart.

A load thread plays the apiserver: it posts EventList batches from the workload generator
(real system traffic with bypasses mixed in) and resends a batch until it gets 200, as
the apiserver's webhook backoff does. The agent delivers to the real test backend (20 ms
of work before it records an event, so kills land inside deliveries). After the kills a
final agent drains the outbox, and the backend's events are compared with what the
packaged rules find in every batch that was answered 200: lost must be 0; a duplicate is
allowed only for an event the restarted agent announced as possibly delivered (a request
cut off by the kill after the backend took it: the backend has no idempotency key).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from support.agent import JSON, Agent, compare, expected_bodies, forwarding_env, serve_args
from support.backend import run_backend
from support.servers import wait_for
from support.workload import Generator

KEY = "crash-test-key-0123456789"
UNCERTAIN = re.compile(r"friction event key=([0-9a-f]{32}) (?:seq=\d+ was being sent|"
                       r"rule=\S+ .*may have reached)|request for friction event "
                       r"key=([0-9a-f]{32}) failed after it may have reached")


class Load:
    """The apiserver stand-in: every batch is resent until it is answered 200."""

    def __init__(self, seed: int, interval: float = 0.04) -> None:
        self.gen = Generator(seed=seed, match_ratio=0.05, object_kib=(0.5, 4.0))
        self.interval = interval
        self.url: str | None = None
        self.answered: list[bytes] = []
        self.retries = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                body = next(self.gen.take(50).batches(50))
                while True:
                    url = self.url
                    try:
                        if url and client.post(url, content=body, headers=JSON
                                               ).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    self.retries += 1
                    time.sleep(0.05)
                self.answered.append(body)
                time.sleep(self.interval)


def test_sigkill_under_load_loses_nothing(tmp_path: Path, long_run: bool) -> None:
    kills = 50 if long_run else 5
    seed = int(time.time())
    rng = random.Random(seed)
    load = Load(seed)
    logs: list[Path] = []
    with run_backend(tmp_path, api_key=KEY, limit=1_000_000) as backend:
        backend.control(latency=0.02)
        env = forwarding_env(tmp_path, backend.url, KEY, HEALERT_BACKOFF_MAX="0.2")
        load.thread.start()
        try:
            for run in range(kills + 1):
                agent = Agent(serve_args(), tmp_path, env)
                logs.append(agent.log_path)
                port, _ = agent.ports()
                load.url = f"http://127.0.0.1:{port}/audit"
                if run < kills:
                    time.sleep(rng.uniform(0.2, 1.5))
                    agent.kill()
                    load.url = None
                    continue
                time.sleep(1.0)
                load.stop.set()
                load.thread.join(60)
                expected = expected_bodies(load.answered)
                wait_for(lambda e=expected: compare(e, backend.accepted())[0] == 0,
                         timeout=60, what="every friction event delivered")
                time.sleep(0.3)
                assert agent.stop() == 0
        finally:
            load.stop.set()
            load.url = None
        accepted = backend.accepted()
    lost, dups, unexpected = compare(expected, accepted)
    uncertain = Counter(m.group(1) or m.group(2) for p in logs
                        for m in UNCERTAIN.finditer(p.read_text()))
    summary = (f"seed {seed}: {kills} kills, {len(load.answered)} batches answered 200 "
               f"({load.retries} resends by the client), {len(expected)} friction events, "
               f"lost {lost}, duplicates {dups}, unexpected {unexpected}, "
               f"announced possible duplicates {sum(uncertain.values())}")
    print(summary)
    assert (lost, unexpected) == (0, 0), summary
    assert dups <= sum(uncertain.values()), summary
