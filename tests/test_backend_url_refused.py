"""A backend URL that cannot be requested (a password written raw, a port out of range,
no host) is refused as a configuration error that never shows the value; a good one
with an encoded password is still taken. The commands run as real processes
(`python -m healert_webhook`), on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from healert_webhook import exits

from support.paths import ROOT

# A generated password often holds '/' (base64): written raw in the URL, it ends the host
# part early, so neither the HTTP client nor the masking of URLs can find the user info.
RAW_PASSWORD = "pa/ss-Zq9"
URL_WITH_RAW_PASSWORD = f"https://healert:{RAW_PASSWORD}@127.0.0.1:1/"


def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    """The command as its own process; a run past `timeout` fails the test (it started
    instead of refusing its configuration)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HEALERT_", "SSL_CERT"))
             and k not in {"RULES_PATH", "AUDIT_LOG_PATH", "KUBECONFIG"}}
    clean["PYTHONPATH"] = str(ROOT)
    clean.update(env)
    try:
        return subprocess.run([sys.executable, "-m", "healert_webhook", *args], cwd=cwd,
                              env=clean, capture_output=True, text=True, check=False,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        pytest.fail(f"`{' '.join(args)}` was still running after {timeout} s instead of "
                    f"refusing its configuration; its output:\n{text[-3000:]}")


def serve_env(tmp_path: Path, url: str) -> dict[str, str]:
    return {"HEALERT_BACKEND_URL": url, "HEALERT_LISTEN": "127.0.0.1:0",
            "HEALERT_OPS_LISTEN": "127.0.0.1:0", "HEALERT_CLUSTER_VIEW": "off",
            "HEALERT_STATE_DIR": str(tmp_path / "state")}


def test_serve_refuses_a_backend_url_with_a_raw_password_and_never_shows_it(
        tmp_path: Path) -> None:
    """Before: the agent started, printed the URL with its password in the start line, and
    its forwarder failed every second with InvalidURL, delivering nothing."""
    done = run("serve", cwd=tmp_path, env=serve_env(tmp_path, URL_WITH_RAW_PASSWORD),
               timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == exits.CONFIG, output
    assert "HEALERT_BACKEND_URL" in done.stderr
    assert "percent-encode" in done.stderr
    assert RAW_PASSWORD not in output and "pa/ss" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("url", [URL_WITH_RAW_PASSWORD, "https://127.0.0.1:99999/",
                                 "http://[::1", "https:///events"])
def test_check_backend_answers_an_unusable_backend_url_with_a_configuration_error(
        tmp_path: Path, url: str) -> None:
    """Before: a traceback (InvalidURL, or an OverflowError from connect()) and exit 1 for
    the first three; 'unreachable' (exit 3) for a URL that names no host."""
    done = run("check-backend", cwd=tmp_path, env={"HEALERT_BACKEND_URL": url})
    assert done.returncode == exits.CONFIG, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "configuration error: HEALERT_BACKEND_URL" in done.stderr
    assert "pa/ss" not in done.stdout + done.stderr


def test_a_valid_backend_url_with_an_encoded_password_is_still_taken(tmp_path: Path) -> None:
    """The refusal is for what cannot be requested: an encoded password, an IPv6 host and
    a path are fine (the backend is unreachable here, exit 3)."""
    for url in ("https://healert:pa%2Fss@127.0.0.1:1/", "http://[::1]:1/healert"):
        done = run("check-backend", cwd=tmp_path, env={"HEALERT_BACKEND_URL": url})
        assert done.returncode == exits.UNREACHABLE, done.stdout + done.stderr
        assert "pa%2Fss" not in done.stdout + done.stderr
