"""The benchmark runs end to end in its tiny configuration and reports every row.

No timing is asserted: only that each section produced its figures (or said plainly why
it could not), that the table was printed and that a second run compares with the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
FIGURE_KEYS = {"label", "unit", "median", "min", "max", "values"}
IN_PROCESS = {"floor", "floor_bodies", "floor_bodies_paused", "detect_inprocess",
              "prefilter_inprocess", "ruled_out", "detect_only"}
SECTION_FIGURES = {
    "(c)/(d)/(f) webhook HTTP": {"webhook_http", "ack_p50", "ack_p99", "ack_max",
                                 "ack_p99_metadata", "rss_webhook"},
    "(c) webhook HTTPS": {"webhook_mtls"},
    "(e) tail catch-up": {"tail_floor", "tail_catchup", "tail_mib_cpu", "tail_mib_wall"},
    "(f) large batch RSS": {"rss_idle", "rss_big_batch"},
}


def run_tiny(output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), "--tiny", "--output", str(output)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_tiny_benchmark_writes_table_and_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    first = run_tiny(output)
    assert first.returncode == 0, first.stderr[-2000:]
    results = json.loads(output.read_text())
    assert results["mode"] == "tiny"
    assert {"cpu_model", "cores", "python"} <= set(results["machine"])
    assert results["workload"]["events"] == 2000
    figures, unavailable = results["figures"], results["unavailable"]
    assert set(figures) >= IN_PROCESS, unavailable
    for key, fig in figures.items():
        assert set(fig) >= FIGURE_KEYS, key
        assert fig["min"] <= fig["median"] <= fig["max"], key
        assert fig["median"] > 0, key
    assert figures["detect_inprocess"]["ratio"] > 0
    assert figures["detect_inprocess"]["ratio_to"] == "floor"
    assert 50 < figures["ruled_out"]["median"] <= 100  # the workload is mostly noise
    for section, keys in SECTION_FIGURES.items():
        # Each section either measured all its rows or says why it could not.
        assert keys <= set(figures) or unavailable.get(section), section
    assert "figure" in first.stdout and "(a) orjson.loads per event" in first.stdout
    assert "compared with the previous run" not in first.stdout

    second = run_tiny(output)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "compared with the previous run" in second.stdout


def test_conflicting_sizes_are_refused() -> None:
    bad = subprocess.run([sys.executable, str(RUN), "--tiny", "--quick"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not allowed with" in bad.stderr


def test_stack_breakdown_measures_each_server() -> None:
    """benchmarks/stack.py serves the same load from its three servers and tells them
    apart: the bare socket spends less per event than the whole agent."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stack.py"),
                           "--events", "4000", "--rounds", "1", "--passes", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    per_event = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(" server CPU per event ")
        if rest:
            per_event[name.strip()] = float(rest.split()[0])
    assert set(per_event) == {"socket", "stack", "agent"}, done.stdout
    assert per_event["socket"] < per_event["agent"], done.stdout
    assert "the events beyond the stack" in done.stdout
