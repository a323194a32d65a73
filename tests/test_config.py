"""Settings: flags over environment over defaults, validated once, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from healert_webhook.cli import build_parser, settings_from_args
from healert_webhook.config import ConfigError, Settings, build_settings


def test_defaults_match_the_design_table() -> None:
    settings = build_settings(environ={})
    assert settings.listen == ("0.0.0.0", 8443)
    assert settings.ops_listen == ("0.0.0.0", 9090)
    assert settings.webhook_path == "/audit"
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.forward_rate == 60.0
    assert settings.audit_log_path == Path("/var/log/kubernetes/audit/audit.log")
    assert settings.entity_namespace == "default"
    assert settings.backend_url is None
    assert settings.state_dir == Path("state")
    assert settings.log_format == "text"


def test_old_agent_variables_still_work() -> None:
    env = {"HEALERT_BACKEND_URL": "http://10.0.0.5:8000", "HEALERT_API_KEY": "k-123",
           "RULES_PATH": "/etc/healert/rules.yaml", "AUDIT_LOG_PATH": "/var/log/k3s-audit.log",
           "ENTITY_NAMESPACE": "platform", "K8S_NAMESPACE": "healert-system"}
    settings = build_settings(environ=env)
    assert settings.backend_url == "http://10.0.0.5:8000"
    assert settings.read_api_key() == "k-123"
    assert settings.rules_path == Path("/etc/healert/rules.yaml")
    assert settings.audit_log_path == Path("/var/log/k3s-audit.log")
    assert settings.entity_namespace == "platform"
    assert settings.k8s_namespace == "healert-system"


def test_flags_win_over_environment() -> None:
    args = build_parser().parse_args(["serve", "--listen", "[::1]:9443", "--forward-rate",
                                      "30"])
    import os
    old = dict(os.environ)
    os.environ["HEALERT_LISTEN"] = "127.0.0.1:1"
    try:
        settings = settings_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert settings.listen == ("::1", 9443)
    assert settings.forward_rate == 30.0


def test_every_bad_value_is_reported_together_and_secrets_are_hidden() -> None:
    env = {"HEALERT_LISTEN": "nowhere", "HEALERT_FORWARD_RATE": "-1",
           "HEALERT_LOG_FORMAT": "xml", "HEALERT_INSECURE_HTTP": "maybe"}
    with pytest.raises(ConfigError) as caught:
        build_settings(environ=env)
    message = str(caught.value)
    for name in env:
        assert name in message


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="must be given together"):
        build_settings(environ={"HEALERT_TLS_CERT": "/x.pem"})
    with pytest.raises(ConfigError, match="must start with http"):
        build_settings(environ={"HEALERT_BACKEND_URL": "backend:8000"})
    with pytest.raises(ConfigError, match="must start with '/'"):
        build_settings(environ={"HEALERT_WEBHOOK_PATH": "audit"})


def test_key_file_wins_and_is_read_fresh(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    settings = build_settings(environ={"HEALERT_API_KEY": "from-env",
                                       "HEALERT_API_KEY_FILE": str(key)})
    assert settings.read_api_key() == "from-file"
    key.write_text("rotated\n")
    assert settings.read_api_key() == "rotated"
    key.unlink()
    with pytest.raises(ConfigError, match="HEALERT_API_KEY_FILE"):
        settings.read_api_key()


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings(api_key="s3cr3t-key", webhook_token="t0ken")
    assert "s3cr3t-key" not in repr(settings)
    assert "t0ken" not in repr(settings)


def test_help_lists_env_names_and_takes_no_secret_flags() -> None:
    done = subprocess.run([sys.executable, "-m", "healert_webhook", "serve", "--help"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert "HEALERT_TLS_CLIENT_CA" in done.stdout
    assert "--api-key " not in done.stdout and "--api-key=" not in done.stdout
    assert "--webhook-token " not in done.stdout
    bad = subprocess.run([sys.executable, "-m", "healert_webhook", "serve", "--listen", "x"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2
    assert "expected HOST:PORT" in bad.stderr


def test_settings_defaults_come_from_the_options_table() -> None:
    from dataclasses import fields

    from healert_webhook.config import OPTIONS
    by_name = {f.name: f for f in fields(Settings)}
    assert set(by_name) == {opt.name for opt in OPTIONS}
    for option in OPTIONS:
        assert by_name[option.name].default == option.default, option.name


def test_rules_path_falls_back_to_a_local_rules_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert build_settings(environ={}).rules_path is None  # the packaged rules
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    assert build_settings(environ={}).rules_path == Path("rules.yaml")
    assert build_settings(environ={"RULES_PATH": "/etc/r.yaml"}).rules_path == Path("/etc/r.yaml")


def test_the_key_is_checked_as_it_is_loaded(tmp_path: Path) -> None:
    """A BOM and the whitespace around the key go; a key that could not go into a header,
    or a file that cannot be read as text, is a ConfigError naming the file, never the key."""
    key = tmp_path / "key"
    settings = build_settings(environ={"HEALERT_API_KEY_FILE": str(key)})
    key.write_bytes("\ufeff  hk_live_1234 \r\n\nsecond line\n".encode())
    assert settings.read_api_key() == "hk_live_1234"
    key.write_bytes(b"\n \n")
    assert settings.read_api_key() is None  # an empty file: no key
    refused = {
        "k\u00e9y-1234\n".encode(): "character 2 of the key is a non-ASCII character",
        b"key\x07-1234": "character 4 of the key is a control character",
        b"key 1234": "character 4 of the key is a space",
        b"\xff\xfekey": "not UTF-8 text (byte 1)",
        b"k" * (64 * 1024 + 1): "larger than 65536 bytes",
    }
    for content, said in refused.items():
        key.write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            settings.read_api_key()
        assert str(key) in str(caught.value) and said in str(caught.value), caught.value
        assert "1234" not in str(caught.value)  # the message never quotes the key
    key.unlink()
    os.mkfifo(key)  # would block a plain open() forever
    with pytest.raises(ConfigError, match="FIFO"):
        settings.read_api_key()
    with pytest.raises(ConfigError, match="HEALERT_API_KEY: character 2"):
        build_settings(environ={"HEALERT_API_KEY": "k\u00e9y"}).read_api_key()
    assert build_settings(environ={"HEALERT_API_KEY": "\ufeffk-1 "}).read_api_key() == "k-1"


def test_a_bad_backend_url_is_refused_without_its_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(environ={"HEALERT_BACKEND_URL": "htp://user:S3cret@backend:8000"})
    assert "S3cret" not in str(caught.value) and "***@backend:8000" in str(caught.value)


def test_entity_settings() -> None:
    default = build_settings(environ={})
    assert default.entity_label_keys == ("backstage.io/kubernetes-id", "app.kubernetes.io/name")
    assert default.catalog_namespace == "kubernetes" and default.access_proxies == ()
    settings = build_settings(environ={
        "HEALERT_ENTITY_LABEL_KEYS": " example.com/team-service , app.kubernetes.io/name",
        "HEALERT_CATALOG_NAMESPACE": "Entity-Namespace",
        "HEALERT_ACCESS_PROXIES": "kube-oidc-proxy, group:access-proxies"})
    assert settings.entity_label_keys == ("example.com/team-service", "app.kubernetes.io/name")
    assert settings.catalog_namespace == "entity-namespace"
    assert settings.access_proxies == ("kube-oidc-proxy", "group:access-proxies")
    with pytest.raises(ConfigError) as bad:
        build_settings(environ={"HEALERT_ENTITY_LABEL_KEYS": " , ",
                                "HEALERT_CATALOG_NAMESPACE": "shop",
                                "HEALERT_ACCESS_PROXIES": "group:"})
    text = str(bad.value)
    assert "HEALERT_ENTITY_LABEL_KEYS=' , ': expected at least one label key" in text
    assert "HEALERT_CATALOG_NAMESPACE='shop': expected one of kubernetes, entity-namespace" \
        in text
    assert "HEALERT_ACCESS_PROXIES='group:': 'group:' names no group" in text


def test_serve_and_tail_take_the_cluster_settings_and_replay_does_not() -> None:
    parser = build_parser()
    for command in ("serve", "tail"):
        args = parser.parse_args([command, "--kubeconfig", "/k", "--cluster-view", "off"])
        assert args.cluster_view == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--kubeconfig", "/k", "x.log"])
    args = parser.parse_args(["replay", "--access-proxies", "group:p", "x.log"])
    assert args.access_proxies == ("group:p",)
