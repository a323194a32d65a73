"""What an audit policy gives each case's needed requests, decided as the apiserver decides
(the package's own policy evaluator), without a cluster.

`python -m conformance.harness.needs [POLICY]` prints every need of the entity and
breadth cases that POLICY records below the level it needs; by default POLICY is the one
the breadth environment runs (the agent's, generated for every rule enabled with the
cluster view on), which must print nothing.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from conformance.harness import breadth_env, objects, scenarios_breadth, scenarios_entity
from conformance.harness.cases import Case, Need
from conformance.harness.scenarios import PROXY
from healert_webhook.auditpolicy.document import Level, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate

_AUTHENTICATED = "system:authenticated"
IDENTITIES = {
    "person": Identity("alice", ("developers", _AUTHENTICATED)),
    "admin": Identity("conformance-admin", ("system:masters", _AUTHENTICATED)),
    "proxy": Identity(PROXY, ("system:serviceaccounts",
                              f"system:serviceaccounts:{objects.PROXY_NS}", _AUTHENTICATED)),
}

_WHO = {"person": "a person", "admin": "an administrator",
        "proxy": "an access proxy's service account"}


@dataclass(frozen=True)
class Shortfall:
    """A need a policy records below its level."""

    case: str
    need: Need
    given: str
    rule: int | None

    def line(self) -> str:
        """One line: the case, the request, what it needs and what the policy gives."""
        n = self.need
        what = f"{n.verb} {n.resource}" + (f"/{n.subresource}" if n.subresource else "")
        rule = f"policy rule {self.rule}" if self.rule else "no policy rule"
        return (f"{self.case}: needs {n.level} for `{what}` by {_WHO[n.who]}; {rule} gives "
                f"{self.given}" + (f" ({n.why})" if n.why else ""))


def shortfalls(policy_path: Path, cases: Iterable[Case]) -> list[Shortfall]:
    """Every need of `cases` that the policy at `policy_path` records too low."""
    doc = parse_policy(policy_path.read_text())
    if doc.policy is None:
        raise ValueError(f"{policy_path}: the apiserver would refuse it: {doc.problems}")
    found = []
    for item in cases:
        for need in item.needs:
            request = Request(need.verb, IDENTITIES[need.who], api_group=need.group,
                              resource=need.resource, subresource=need.subresource,
                              namespace="" if need.who == "admin" else "payments")
            decision = evaluate(doc.policy, request)
            wanted = Level.from_text(need.level)
            if wanted is None:
                raise ValueError(f"{item.name}: no such level {need.level!r}")
            if decision.level < wanted:
                found.append(Shortfall(item.name, need, decision.level.text, decision.rule))
    return found


def all_cases() -> tuple[Case, ...]:
    """The entity and breadth cases."""
    return scenarios_entity.CASES + scenarios_breadth.CASES


def main(argv: list[str]) -> int:
    """Print the shortfalls of the policy named in `argv` (default: the breadth
    environment's generated one)."""
    if argv:
        found = shortfalls(Path(argv[0]), all_cases())
    else:
        with tempfile.TemporaryDirectory() as folder:
            found = shortfalls(breadth_env.generated_policy(Path(folder)), all_cases())
    for shortfall in found:
        print(shortfall.line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
