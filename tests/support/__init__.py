"""Helpers shared by the tests and the benchmarks (never shipped in the wheel)."""
