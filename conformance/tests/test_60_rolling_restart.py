"""A rolling restart of the webhook agent on one node while audit traffic flows.

The old agent stops and a new one starts on the same port and state directory, as a
DaemonSet replaces a node's pod: with maxSurge 0 (the port closed for a while: the pod's
replacement and image pull) and with maxSurge 1 (the new agent shares the ports before
the old one stops). Either way every read alice made reaches the outbox exactly once and
the apiserver drops nothing; the figures (how many reads arrived through the apiserver's
retries, and how late) are printed for docs/operations.md. `python -m conformance.harness
rolling` measures other gaps.
"""

from __future__ import annotations

import pytest

from conformance.harness.env import Environment
from conformance.harness.rolling import roll
from conformance.harness.runner import Runner

pytestmark = pytest.mark.timeout(900)

# Longer than the apiserver's first retry (10 s), well inside its last (about 81 s).
CLOSED_SECONDS = 20.0


@pytest.mark.parametrize(("strategy", "gap"), [("replace", CLOSED_SECONDS), ("surge", 0.0)])
def test_a_rolling_restart_loses_nothing(env: Environment, runner: Runner, strategy: str,
                                         gap: float) -> None:
    result = roll(env, runner, strategy, gap=gap)
    print(result.line())
    assert not result.load.errors, result.load.errors[:3]
    assert result.reads >= 100, "the load ran before, during and after the restart"
    assert result.stored == result.reads, result.line()
    assert result.twice == 0, result.line()
    assert result.dropped == 0, result.line()
    if strategy == "replace":
        assert result.closed_seconds >= CLOSED_SECONDS
        assert result.resent > 0, "reads made while the port was closed came by retries"
    assert env.agents.serve is not None and env.agents.serve.proc.alive()
