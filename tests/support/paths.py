"""Where the repository and the shared fixtures are, found relative to this file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Real audit events written by real clusters, kept beside the repository when present.
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
SEED_RULES = ROOT.parent / "shared" / "seed" / "rules.yaml"  # the old agent's rules
