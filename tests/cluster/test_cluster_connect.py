"""How the view finds the apiserver: off, a named kubeconfig, the pod's service account."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from healert_webhook.cluster.connect import find
from healert_webhook.config import ConfigError, build_settings


def kubeconfig(path: Path, server: str = "https://127.0.0.1:6443") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ops",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "ops", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def account(folder: Path) -> Path:
    folder.mkdir()
    (folder / "token").write_text("header.payload.signature")
    (folder / "namespace").write_text("healert-system")
    (folder / "ca.crt").write_text("")
    return folder


def test_off_never_connects(tmp_path: Path) -> None:
    assert find("off", (kubeconfig(tmp_path / "k"),)) is None


def test_nothing_configured_means_no_view(tmp_path: Path) -> None:
    assert find("auto", (), environ={}, account=tmp_path / "absent") is None
    # a token without the service environment is no pod either
    assert find("auto", (), environ={}, account=account(tmp_path / "sa")) is None


def test_the_first_existing_file_of_a_list_is_used(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "second", server="https://10.0.0.1:6443")
    found = find("auto", (tmp_path / "missing", path), environ={})
    assert found is not None
    assert found.server == "https://10.0.0.1:6443"
    assert found.source == f"kubeconfig {path} (context ops)"
    assert "not-a-real-token" not in repr(found.source)


def test_a_named_kubeconfig_wins_over_the_service_account(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "k")
    found = find("auto", (path,), environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                 account=account(tmp_path / "sa"))
    assert found is not None and found.source.startswith("kubeconfig")


def test_a_named_kubeconfig_that_cannot_be_used_is_a_configuration_error(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find("auto", (tmp_path / "absent",), environ={})
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\ncontexts: [oops\n")
    with pytest.raises(ConfigError, match="cannot be used"):
        find("auto", (broken,), environ={})
    no_context = tmp_path / "no-context"
    no_context.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config",
                                          "clusters": [], "contexts": [], "users": []}))
    with pytest.raises(ConfigError):
        find("auto", (no_context,), environ={})


def test_in_a_pod_the_service_account_is_used(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    sa = account(tmp_path / "sa")
    found = find("auto", (), account=sa)
    assert found is not None
    assert found.source == "the pod's service account"
    assert found.server == "https://10.96.0.1:443"
    assert found.config.user is not None and found.config.user.token_file == str(sa / "token")


def test_the_settings_read_the_kubeconfig_list_and_the_mode(tmp_path: Path) -> None:
    settings = build_settings(environ={"KUBECONFIG": f"{tmp_path}/a:{tmp_path}/b",
                                       "HEALERT_CLUSTER_VIEW": "OFF"})
    assert settings.kubeconfig == (tmp_path / "a", tmp_path / "b")
    assert settings.cluster_view == "off"
    assert settings.cluster_tombstone_window == 600.0
    own = build_settings(environ={"KUBECONFIG": "/x", "HEALERT_KUBECONFIG": "/y"})
    assert own.kubeconfig == (Path("/y"),)
    with pytest.raises(ConfigError, match="HEALERT_CLUSTER_VIEW"):
        build_settings(environ={"HEALERT_CLUSTER_VIEW": "on"})
    with pytest.raises(ConfigError, match="HEALERT_CLUSTER_TOMBSTONE_WINDOW"):
        build_settings(environ={"HEALERT_CLUSTER_TOMBSTONE_WINDOW": "0"})
