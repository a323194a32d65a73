"""healert-webhook: turn Kubernetes audit events into Healert friction events."""

__version__ = "0.2.0"
