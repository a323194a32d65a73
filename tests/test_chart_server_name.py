"""The chart's server certificate against the name the shipped apiserver kubeconfigs check.

Rendered with `helm template` like tests/test_chart.py (helm from $HELM or PATH; skipped
without it unless HEALERT_REQUIRE_HELM=1), under a release name and namespace other than
the ones the plain manifests use, as platform teams install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import helm, render  # noqa: F401 - the fixture is used by name

from support.paths import ROOT

KUBECONFIGS = sorted((ROOT / "manifests" / "apiserver").glob("audit-webhook-kubeconfig-*.yaml"))


def _server_names() -> set[str]:
    """The names the shipped apiserver kubeconfigs check the server certificate against."""
    names: set[str] = set()
    for path in KUBECONFIGS:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        for cluster in config["clusters"]:
            names.add(cluster["cluster"]["tls-server-name"])
    return names


def test_the_shipped_kubeconfigs_name_the_server() -> None:
    assert KUBECONFIGS and _server_names() == {"healert-webhook.healert-system.svc"}


@pytest.mark.parametrize(("release", "namespace", "extra"), [
    ("healert", "healert-system", {}),
    ("healert-webhook", "platform-audit", {}),
    ("rel", "healert-system", {"nameOverride": "audit-agent"}),
])
@pytest.mark.parametrize("mode", ["node-local", "service"])
def test_cert_manager_serves_the_name_the_shipped_kubeconfigs_check(
    helm: str, tmp_path: Path, mode: str, release: str, namespace: str,  # noqa: F811
    extra: dict[str, Any],
) -> None:
    """The apiserver checks the server certificate against the kubeconfig's
    tls-server-name; a certificate without it fails every handshake, and the apiserver
    drops the batches it could not send."""
    values = {"mode": mode, **extra, "webhook": {"tls": {"certManager": {"enabled": True}}}}
    docs = render(helm, tmp_path, values, release=release, namespace=namespace)
    [server] = [d for d in docs if d["kind"] == "Certificate"
                and d["spec"]["secretName"] == "healert-webhook-tls"]
    names = set(server["spec"]["dnsNames"])
    assert _server_names() <= names, (release, namespace, sorted(names))
