"""Compare two checkouts of the agent under the same webhook load, alternating.

    .venv/bin/python benchmarks/ab.py OLD_CHECKOUT NEW_CHECKOUT [--tls] [--rounds 12]
        [--stream today|realistic|small]
    .venv/bin/python benchmarks/ab.py OLD_CHECKOUT NEW_CHECKOUT --tail [--rounds 4]
        [--stream ...]      # the tail's catch-up instead, the quick size's rotated log

This machine's speed wanders by a third within minutes, more than most changes are
worth, so rates of two runs do not compare. Here both servers run side by side and take
the benchmark's throughput load in turn, round after round (the order flips every
round); each round gives the ratio of their CPU per event, and the median of those
ratios is the answer: below 1, NEW spends less CPU than OLD. Each checkout is imported
from its own tree (PYTHONPATH), with this interpreter and its packages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import procs
import run

from support import workload


def start(tree: Path, workdir: Path, tls: bool) -> tuple[procs.Agent, procs.PKI | None]:
    """`serve` from `tree` on a free loopback port."""
    workdir.mkdir()
    pki = procs.mtls_pki(workdir) if tls else None
    saved, procs.REPO = procs.REPO, tree  # agent_env puts REPO first on PYTHONPATH
    try:
        return procs.start_server(workdir, pki), pki
    finally:
        procs.REPO = saved


def cpu_of_one_load(agent: procs.Agent, pki: procs.PKI | None, bodies: Path,
                    connections: int, ciphers: set[str] | None = None) -> float:
    """Server CPU seconds for two passes of the bodies (the TLS ciphers negotiated go to
    `ciphers`)."""
    before = procs.cpu_seconds(agent.pid)
    result = run.loadgen(run.server_url(agent, pki is not None), bodies,
                         ["throughput", "--connections", str(connections), "--passes", "2"],
                         pki)
    if ciphers is not None:
        ciphers.update(result.get("ciphers", []))
    return procs.cpu_seconds(agent.pid) - before


def compare_tails(old: Path, new: Path, stream: str, rounds: int) -> int:
    """Each checkout's `tail` catches up the quick size's rotated log in turn, round after
    round (the order flips); print its CPU a line and the median ratio of NEW to OLD."""
    cfg = run.MODES["quick"]
    chunks = run.log_chunks(cfg, stream)
    lines = sum(chunk.count(b"\n") for chunk in chunks)
    spent: dict[Path, list[float]] = {old: [], new: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for tree in (old, new) if round_ % 2 == 0 else (new, old):
                saved, procs.REPO = procs.REPO, tree
                try:
                    cpu, _wall = run.tail_once(
                        Path(tmp), f"{round_}-{'new' if tree == new else 'old'}", chunks,
                        lines)
                finally:
                    procs.REPO = saved
                spent[tree].append(cpu)
    for name, tree in (("OLD", old), ("NEW", new)):
        print(f"{name} tailer CPU a line, by round:",
              " ".join(f"{cpu / lines * 1e6:.2f}" for cpu in spent[tree]), "us")
    ratios = [b / max(a, 1e-3) for a, b in zip(spent[old], spent[new], strict=True)]
    print("NEW/OLD CPU a line, by round:", " ".join(f"{r:.2f}" for r in ratios))
    print(f"median {statistics.median(ratios):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the per-round ratios and their median."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--tls", action="store_true", help="HTTPS with client certificates")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--stream", choices=workload.STREAMS, default="today",
                        help="the workload posted (tests/support/workload.py)")
    parser.add_argument("--tail", action="store_true",
                        help="compare the tail's catch-up (benchmark row (e)) instead")
    args = parser.parse_args(argv)
    if args.tail:
        return compare_tails(args.old.resolve(), args.new.resolve(), args.stream, args.rounds)
    work = workload.stream(args.stream, args.events, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.json"
        bodies.write_bytes(b"\n".join(work.batches(400)) + b"\n")
        old = start(args.old.resolve(), Path(tmp) / "old", args.tls)
        new = start(args.new.resolve(), Path(tmp) / "new", args.tls)
        negotiated: dict[str, set[str]] = {"OLD": set(), "NEW": set()}
        try:
            for (agent, pki), name in ((old, "OLD"), (new, "NEW")):  # warm both up once
                cpu_of_one_load(agent, pki, bodies, 4, negotiated[name])
            ratios = []
            for round_ in range(args.rounds):
                order = (old, new) if round_ % 2 == 0 else (new, old)
                spent = {id(agent): cpu_of_one_load(agent, pki, bodies, 4)
                         for agent, pki in order}
                ratios.append(spent[id(new[0])] / max(spent[id(old[0])], 1e-3))
        finally:
            old[0].stop()
            new[0].stop()
    if args.tls:
        print("TLS ciphers negotiated:", ", ".join(
            f"{name} {'/'.join(sorted(found)) or '?'}" for name, found in negotiated.items()))
    print("NEW/OLD CPU per event, by round:", " ".join(f"{r:.2f}" for r in ratios))
    print(f"median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
