"""Conformance suite: the agent against a real kube-apiserver (see README.md)."""
