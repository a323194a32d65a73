"""How long a big rules file takes to load, index and report.

    .venv/bin/python benchmarks/rules_scale.py               # 30,000 rules, 1,000,000 problems
    .venv/bin/python benchmarks/rules_scale.py --rules 5000 --problems 100000
    .venv/bin/python benchmarks/rules_scale.py --resources 30000 --general-every 0 --problems 10

Three files, written to a temporary directory:
  rules     N valid rules: each names one of R resources (default 300: a cluster's
            resource types, CRDs included), a third a subresource, half a verb or two;
            one in G (default 500; 0: none) names no resource, so the index holds it under
            every resource. Timed: the agent's reload (`Pipeline.reload`: read, validate,
            index, pre-filter, log), then `load_rules` and `Detector` (the index) apart;
            "index entries" counts the rules in all its leaves, the size the build is
            proportional to.
  problems  a `rules:` list of M bare numbers (each "expected a rule"): the agent's
            reload of it (and the log lines it writes), and the lines `validate` prints.
  warnings  a valid file whose N rules each name `resource: pod` (each a warning).
Times are wall-clock seconds of this process, one run each.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from healert_webhook.config import Settings  # noqa: E402
from healert_webhook.detect import Detector  # noqa: E402
from healert_webhook.pipeline import Pipeline  # noqa: E402
from healert_webhook.rules import RulesError, load_rules  # noqa: E402

VERBS = ("get", "create", "update", "patch", "delete")




def rules_text(count: int, resources: int = 300, general_every: int = 500) -> str:
    """`count` valid rules spread over `resources` resources, subresources and verbs; one
    in `general_every` (0: none) names no resource."""
    out = ["rules:"]
    for i in range(count):
        out += [f"  - name: rule-{i:06d}", "    severity: medium", "    match:"]
        general = general_every > 0 and i % general_every == 0
        if not general:
            out.append(f"      resource: res{i % resources}")
        if i % 3 == 0:
            out.append(f"      subresource: sub{i % 7}")
        if i % 2 == 0:
            out.append(f"      verbs: [{VERBS[i % 5]}, {VERBS[(i + 2) % 5]}]")
        if general:
            out.append(f"      namespace_contains: team{i % 11}")
    return "\n".join(out) + "\n"


def index_entries(detector: Detector) -> int:
    """The rules held in all the index's leaves (a leaf shared by two keys counts twice)."""
    by_resource, rest = detector.index
    total = 0
    for subs, other_sub in [*by_resource.values(), rest]:
        for verbs, other_verb in [*subs.values(), other_sub]:
            for leaf in [*verbs.values(), other_verb]:
                total += len(leaf[0]) if leaf else 0
    return total


def problems_text(count: int) -> str:
    """A rules list of `count` numbers: one problem each, four bytes a line."""
    return "rules:\n" + "- 1\n" * count


def warnings_text(count: int) -> str:
    """`count` valid rules that each draw a warning (`pod` is never audited)."""
    return "rules:\n" + "".join(
        f"  - {{name: rule-{i:06d}, severity: low, match: {{resource: pod}}}}\n"
        for i in range(count))


def timed(what: str, call):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        result = call()
    except RulesError as exc:
        result = exc
    print(f"{what:<44} {time.perf_counter() - start:8.2f} s")
    return result


def agent_reload(path: Path) -> tuple[float, int]:
    """A reload as the agent runs one when the file changed (`Pipeline.reload`): the
    seconds it takes and the log lines it writes."""
    pipe = Pipeline(Settings(rules_path=path), Detector(load_rules(None)))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("healert_webhook")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        start = time.perf_counter()
        pipe.reload()
        return time.perf_counter() - start, len(lines)
    finally:
        logger.removeHandler(handler)


def validate_lines(path: Path) -> int:
    """How many lines `healert-webhook validate PATH` prints (stdout and stderr)."""
    from healert_webhook.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        main(["validate", str(path)])
    return out.getvalue().count("\n") + err.getvalue().count("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=30_000)
    parser.add_argument("--problems", type=int, default=1_000_000)
    parser.add_argument("--resources", type=int, default=300)
    parser.add_argument("--general-every", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp, "rules.yaml")
        rules.write_text(rules_text(args.rules, args.resources, args.general_every))
        took, logged = agent_reload(rules)
        print(f"{f'agent reload, {args.rules} rules':<44} {took:8.2f} s  ({logged} log lines)")
        ruleset = timed("  load_rules alone", lambda: load_rules(rules))
        detector = timed("  Detector alone (build_index)", lambda: Detector(ruleset))
        print(f"{'  index entries':<44} {index_entries(detector):8d}")

        bad = Path(tmp, "problems.yaml")
        bad.write_text(problems_text(args.problems))
        took, logged = agent_reload(bad)
        print(f"{f'agent reload, {args.problems} problems':<44} {took:8.2f} s  "
              f"({logged} log lines)")
        start = time.perf_counter()
        lines = validate_lines(bad)
        print(f"{'validate of it, lines printed':<44} {lines:8d}  "
              f"({time.perf_counter() - start:.2f} s)")

        warned = Path(tmp, "warnings.yaml")
        warned.write_text(warnings_text(args.rules))
        start = time.perf_counter()
        lines = validate_lines(warned)
        print(f"{f'validate, {args.rules} warnings: lines printed':<44} {lines:8d}  "
              f"({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
