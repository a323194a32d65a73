"""Review of the backend contract: what the agent sends, what the test backend enforces,
and the read-back that settles a lost answer, each against the real test backend process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from healert_webhook import backend_contract
from healert_webhook.rules.load import RulesError, parse_rules

from support.backend import Backend, run_backend

KEY = "review-contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def running(tmp_path: Path) -> Backend:
    with run_backend(tmp_path, api_key=KEY, limit=100, window=60.0) as started:
        yield started  # type: ignore[misc]


def _event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"entity_ref": "component:pay/api", "type": "kubectl-exec",
                            "severity": "high"}
    body.update(fields)
    return body


# -- a final newline: Python's `$` accepts it, the backend's pattern (pydantic) does not ---

@pytest.mark.parametrize("field, value", [("entity_ref", "component:pay/api\n"),
                                          ("type", "kubectl-exec\n")])
def test_backend_refuses_a_final_newline_in_a_patterned_field(running: Backend, field: str,
                                                               value: str) -> None:
    body = _event(**{field: value})
    assert [p.field for p in backend_contract.validate(body)] == [field]
    answer = httpx.post(running.url + "/events", json=body, headers=AUTH, timeout=10.0)
    assert answer.status_code == 422, answer.text
    assert running.accepted() == []


def test_a_rule_name_with_a_final_newline_is_refused_when_loading() -> None:
    # Accepted, every event of this rule would be cut to "ab" and dead-lettered.
    text = ('rules:\n  - name: "ab\\n"\n    description: "exec into {name}"\n'
            "    severity: high\n    match:\n      resource: pods\n      subresource: exec\n")
    with pytest.raises(RulesError):
        parse_rules(text)
