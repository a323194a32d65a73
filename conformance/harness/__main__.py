"""`python -m conformance.harness up`: a control plane auditing to both agents until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from conformance.harness.env import Environment


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the environment until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m conformance.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver and both agents; Ctrl-C stops")
    up.add_argument("--dir", type=Path, default=None,
                    help="working folder (default: a new folder under conformance/.run)")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="up-", dir=_run_root()))
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


def _run_root() -> Path:
    root = Path(__file__).resolve().parents[1] / ".run"
    root.mkdir(exist_ok=True)
    return root


if __name__ == "__main__":
    sys.exit(main())
