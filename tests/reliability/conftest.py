"""Fixtures of the reliability suite (helpers live in tests/support/agent.py).

Long variants (`pytest --long`) use the `long_run` fixture of tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.agent import Agent


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents started by a test; each is killed at the end whatever happened."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()
