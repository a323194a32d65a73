"""Measure the proposal in stream_items.py against the webhook's whole-body parse.

    .venv/bin/python benchmarks/experiments/stream_bench.py          # CPU, interleaved reps
    .venv/bin/python benchmarks/experiments/stream_bench.py --rss    # a 60 MiB batch's peak

Checks first that both give the same items and the same friction events.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent.parent / "tests"))

import orjson
from stream_items import stream_items

from healert_webhook.audit import batch_items
from healert_webhook.config import build_settings
from healert_webhook.detect import Stats
from healert_webhook.pipeline import Pipeline, gc_paused, make_detector
from healert_webhook.rules import load_rules

from support import workload

HERE = Path(__file__).resolve().parent


def peak_mib() -> float:
    """Peak RSS of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss(mode: str) -> None:
    """Peak RSS growth while one 60 MiB batch is parsed whole or streamed."""
    body = workload.large_batch(60 << 20, seed=1)
    base = peak_mib()
    with gc_paused():
        if mode == "whole":
            items = batch_items(orjson.loads(body))
            count = len(items)
            del items
        else:
            count = sum(1 for _ in stream_items(body))
    print(f"{mode}: {count} items of a {len(body) >> 20} MiB batch, peak RSS "
          f"{base:.0f} -> {peak_mib():.0f} MiB")


def cpu() -> None:
    """Events per CPU-second: per-event floor, whole body, streamed (GC paused)."""
    work = workload.generate(16_000, match_ratio=0.01, seed=1)
    bodies = list(work.batches(400))
    settings = build_settings({}, environ={})
    repo_rules = HERE.parent.parent / "rules.yaml"
    pipeline = Pipeline(settings, make_detector(
        load_rules(repo_rules if repo_rules.is_file() else None), settings))
    for body in bodies:
        whole = batch_items(orjson.loads(body))
        assert list(stream_items(body)) == whole
        assert pipeline.detector.detect(whole, Stats()) == \
            pipeline.detector.detect(stream_items(body), Stats())
    print(f"same items and frictions for {len(bodies)} bodies")

    def floor() -> None:
        for item in work.items:
            orjson.loads(item)

    def whole_body() -> None:
        for body in bodies:
            with gc_paused():
                items = batch_items(orjson.loads(body))
                pipeline.detect(items, "bench")
                del items

    def streamed() -> None:
        for body in bodies:
            with gc_paused():
                pipeline.detect(stream_items(body), "bench")

    runs: dict[str, Callable[[], None]] = {"floor": floor, "whole, GC paused": whole_body,
                                           "streamed, GC paused": streamed}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(7):
        for name, func in runs.items():
            start = time.process_time()
            func()
            rates[name].append(len(work.items) / (time.process_time() - start))
    base = statistics.median(rates["floor"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:22} {med:9,.0f} events/cpu-s (min {min(values):,.0f} max "
              f"{max(values):,.0f}) ratio {med / base:.2f}")


if __name__ == "__main__":
    if "--rss" in sys.argv:
        rss("stream")  # the smaller peak first: a high-water mark only grows
        rss("whole")
    else:
        cpu()
