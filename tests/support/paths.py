"""Where the repository and the shared fixtures are, found relative to this file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Real audit events written by real clusters, kept beside the repository when present.
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
# The earlier Go agent's documentation and rules, the compatibility baseline.
SHARED_SEED = ROOT.parent / "shared" / "seed"
