"""Harness for the conformance suite: a real etcd, kube-apiserver and kubectl on loopback."""
