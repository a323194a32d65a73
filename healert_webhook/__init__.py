"""healert-webhook: turn Kubernetes audit events into Healert friction events."""

from importlib import metadata

try:  # the version is written once, in pyproject.toml
    __version__ = metadata.version("healert-webhook")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
