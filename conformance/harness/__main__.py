"""`python -m conformance.harness up|load|rolling`: a control plane until Ctrl-C, one load
measured, or one rolling restart of the webhook agent measured.

`up` starts etcd, kube-apiserver, kube-controller-manager and both agents and runs until
Ctrl-C. `load [--policy FILE]` starts a fresh environment auditing with FILE (default: the
policy the agent generates for its rules), runs the load of
`noise.py` with every scenario's bypass, and prints one Markdown table row (`--header`
prints the header first); `--json FILE` keeps every figure and friction event. `rolling
--strategy replace --gap 60` replaces the webhook agent with the port closed for 60 s
(`surge`: the new agent shares the ports first) while alice reads a Secret, and prints
what arrived, how late, and what the apiserver dropped (harness/rolling.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

from conformance.harness.env import Environment
from conformance.harness.measure import HEADER, measure
from conformance.harness.noise import LoadPlan
from conformance.harness.rolling import STRATEGIES, roll
from conformance.harness.runner import Runner


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m conformance.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver, the controller-manager and "
                                   "both agents; Ctrl-C stops")
    up.add_argument("--dir", type=Path, default=None,
                    help="working folder (default: a new folder under conformance/.run)")
    load = sub.add_parser("load", help="measure one load under an audit policy")
    load.add_argument("--policy", type=Path, default=None,
                      help="the audit policy file (default: the one `healert-webhook policy` "
                           "generates for the agent's rules)")
    load.add_argument("--label", default=None, help="the table row's name (default: file name)")
    load.add_argument("--ticks", type=int, default=LoadPlan.ticks,
                      help=f"length of the load in ticks (default {LoadPlan.ticks})")
    load.add_argument("--tick-seconds", type=float, default=LoadPlan.tick_seconds,
                      help=f"seconds per tick (default {LoadPlan.tick_seconds})")
    load.add_argument("--nodes", type=int, default=LoadPlan.nodes,
                      help=f"fake kubelets (default {LoadPlan.nodes})")
    load.add_argument("--cluster-view", choices=("flag", "env"), default=None,
                      help="give the agent its cluster-view kubeconfig as --kubeconfig or "
                           "KUBECONFIG (default: none)")
    load.add_argument("--header", action="store_true", help="print the table header first")
    load.add_argument("--json", type=Path, default=None, help="write every figure here")
    load.add_argument("--dir", type=Path, default=None,
                      help="working folder (default: a new folder under conformance/.run)")
    rolling = sub.add_parser("rolling", help="measure one rolling restart of the webhook "
                                             "agent under audit traffic")
    rolling.add_argument("--strategy", choices=STRATEGIES, required=True)
    rolling.add_argument("--gap", type=float, default=20.0,
                         help="replace: seconds the port stays closed (default 20)")
    rolling.add_argument("--predecessor", type=Path, default=None,
                         help="the replaced agent's executable (an earlier version; "
                              "default: the agent under test)")
    rolling.add_argument("--dir", type=Path, default=None,
                         help="working folder (default: a new folder under conformance/.run)")
    args = parser.parse_args(argv)
    if args.command == "load":
        return _load(args)
    if args.command == "rolling":
        return _rolling(args)
    return _up(args.dir)


def _rolling(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="rolling-", dir=_run_root()))
    env = Environment(root).start()
    try:
        runner = Runner(env, root / "work")
        runner.baseline()
        result = roll(env, runner, args.strategy, gap=args.gap,
                      predecessor=args.predecessor)
    finally:
        env.stop()
    print(result.line(), flush=True)
    lost = result.reads - result.stored
    return 1 if lost or result.twice or result.dropped or result.load.errors else 0


def _up(folder: Path | None) -> int:
    root = folder or Path(tempfile.mkdtemp(prefix="up-", dir=_run_root()))
    env = Environment(root)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"starting in {root} ...", file=sys.stderr, flush=True)
    env.start()
    try:
        print(env.describe(), flush=True)
        print("# running; Ctrl-C (or SIGTERM) stops everything", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        env.stop()
    return 0


def _load(args: argparse.Namespace) -> int:
    policy: Path | None = args.policy.resolve() if args.policy else None
    if policy is not None and not policy.is_file():
        print(f"load: no policy file {policy}", file=sys.stderr)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="load-", dir=_run_root()))
    plan = LoadPlan(ticks=args.ticks, tick_seconds=args.tick_seconds, nodes=args.nodes)
    print(f"load: {plan} under {policy or 'the generated policy'}, files in {root}",
          file=sys.stderr, flush=True)
    result = measure(policy, plan, root, args.label, args.cluster_view)
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    for error in result.errors[:10]:
        print(f"load: error: {error}", file=sys.stderr)
    print(f"load: {result.seconds} s; friction by rule {dict(sorted(result.friction.items()))}; "
          f"load requests {result.load_requests}", file=sys.stderr)
    if args.header:
        print(HEADER)
    print(result.row(), flush=True)
    return 1 if result.errors else 0


def _run_root() -> Path:
    root = Path(__file__).resolve().parents[1] / ".run"
    root.mkdir(exist_ok=True)
    return root


if __name__ == "__main__":
    sys.exit(main())
