"""`check-backend` and `outbox` commands against a real backend process and real files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from healert_webhook import exits
from healert_webhook.commands.check_backend import check_backend
from healert_webhook.commands.outbox import outbox_command
from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.backend import Backend, run_backend

KEY = "cli-key"


class Args:
    """What cli.py's argparse would hand over."""

    def __init__(self, **values: Any) -> None:
        self.json = False
        self.limit = None
        self.keys: list[str] = []
        self.yes = False
        self.dead = False
        self.corrupt = False
        self.__dict__.update(values)


def friction(n: int) -> Friction:
    return Friction(f"{n:032x}", "exec-into-pod", {
        "entity_ref": f"component:default/svc-{n}", "type": "exec-into-pod",
        "severity": "high", "description": f"event-{n}"})


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with run_backend(tmp_path_factory.mktemp("cli"), api_key=KEY) as server:
        yield server


def settings_for(tmp_path: Path, url: str | None, key: str = KEY) -> Settings:
    key_file = tmp_path / "key"
    key_file.write_text(key)
    return Settings(backend_url=url, api_key_file=key_file, state_dir=tmp_path / "state")


def test_check_backend_ok_with_a_test_event(tmp_path: Path, backend: Backend,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    backend.control(mode="reset")
    assert check_backend(settings_for(tmp_path, backend.url), send_test=True) == exits.OK
    out = capsys.readouterr().out
    assert "ok   health" in out and "key accepted" in out and "test event delivered" in out
    assert KEY not in out  # never print the secret
    accepted = backend.view()["events"]
    assert [e["type"] for e in accepted] == ["healert-webhook-test"]


def test_check_backend_without_test_sends_no_event(tmp_path: Path, backend: Backend) -> None:
    backend.control(mode="reset")
    assert check_backend(settings_for(tmp_path, backend.url), send_test=False) == exits.OK
    assert backend.view()["events"] == []


def test_check_backend_wrong_key(tmp_path: Path, backend: Backend,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = check_backend(settings_for(tmp_path, backend.url, "nope"), send_test=True)
    assert code == exits.KEY_REFUSED
    assert "HEALERT_API_KEY_FILE" in capsys.readouterr().out


def test_check_backend_test_event_rejected(tmp_path: Path, backend: Backend,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    backend.control(mode="reset")
    backend.control(reject_types=["healert-webhook-test"])
    try:
        code = check_backend(settings_for(tmp_path, backend.url), send_test=True, as_json=True)
    finally:
        backend.control(mode="reset")
    assert code == exits.EVENT_REFUSED
    report = json.loads(capsys.readouterr().out)
    assert report["exit_code"] == exits.EVENT_REFUSED
    assert report["steps"][-1]["step"] == "test" and "422" in report["steps"][-1]["message"]


def test_check_backend_unreachable_and_unconfigured(tmp_path: Path) -> None:
    code = check_backend(settings_for(tmp_path, "http://127.0.0.1:9"), send_test=False)
    assert code == exits.UNREACHABLE
    assert check_backend(settings_for(tmp_path, None), send_test=False) == exits.CONFIG


def test_outbox_status_list_dead_retry_purge(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(tmp_path, None)
    assert outbox_command(settings, "status", Args()) == exits.OK
    assert "nothing queued" in capsys.readouterr().out
    box = Outbox(settings.outbox_path)
    box.store([friction(n) for n in range(3)])
    box.dead_letter(box.head()[0].seq, status=422, reason="backend refused the event (HTTP 422)",
                    answer='{"detail":[{"msg":"type not accepted"}]}')
    box.close()

    assert outbox_command(settings, "status", Args(json=True)) == exits.OK
    status = json.loads(capsys.readouterr().out)
    assert (status["depth"], status["dead_letters"]) == (2, 1)

    assert outbox_command(settings, "list", Args()) == exits.OK
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "component:default/svc-1" in listed[0]

    assert outbox_command(settings, "dead", Args()) == exits.OK
    dead = capsys.readouterr().out
    assert "HTTP 422" in dead and "type not accepted" in dead

    assert outbox_command(settings, "retry-dead", Args()) == exits.OK
    assert "requeued 1" in capsys.readouterr().out

    assert outbox_command(settings, "purge", Args()) == exits.FAILED  # no --yes: nothing happens
    assert "would delete 3 queued" in capsys.readouterr().err
    assert outbox_command(settings, "purge", Args(yes=True, json=True)) == exits.OK
    assert json.loads(capsys.readouterr().out) == {"purged": 3, "dead": False}
    assert outbox_command(settings, "unknown", Args()) == exits.FAILED


def test_a_corrupt_outbox_is_explained_and_moved_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(tmp_path, None)
    settings.state_dir.mkdir()
    settings.outbox_path.write_bytes(b"garbage " * 1000)
    assert outbox_command(settings, "status", Args()) == exits.FAILED
    err = capsys.readouterr().err
    assert str(settings.outbox_path) in err and "outbox purge --corrupt" in err
    assert outbox_command(settings, "purge", Args(corrupt=True)) == exits.FAILED  # needs --yes
    assert outbox_command(settings, "purge", Args(corrupt=True, yes=True)) == exits.OK
    assert not settings.outbox_path.exists()
    assert list(settings.state_dir.glob("outbox.db.corrupt-*"))


# -- what /health answered instead of {"status": "ok"} ---------------------------------------

class Health:
    """A real HTTP server on loopback whose `GET /health` answer the test sets."""

    def __init__(self) -> None:
        self.code = 200
        self.body = b'{"status": "ok"}'
        self.content_type = "application/json"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.code)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.code, self.body, self.content_type = code, body, content_type

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    server = Health()
    yield server
    server.close()


def health_step(tmp_path: Path, health: Health,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = check_backend(settings_for(tmp_path, health.url), send_test=False, as_json=True)
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert steps[0]["step"] == "health"
    return code, steps[0]["message"]


def test_a_degraded_backend_is_told_against_what_it_should_answer(
        tmp_path: Path, health: Health, capsys: pytest.CaptureFixture[str]) -> None:
    health.answer(200, b'{"status": "degraded", "version": "2.1", "auth": "enabled"}')
    code, message = health_step(tmp_path, health, capsys)
    assert code == exits.UNREACHABLE
    assert "'degraded'" in message and "version 2.1" in message
    assert '{"status": "ok", ...}' in message  # what it should have said
    assert "stay queued in the outbox" in message  # what it means for delivery


@pytest.mark.parametrize(("code", "body", "content_type", "shown", "meaning"), [
    (503, b"upstream connect error\n\tor disconnect", "text/plain",
     "HTTP 503 Service Unavailable with body 'upstream connect error or disconnect'",
     "retried with backoff"),
    (404, b'{"detail": "Not Found"}', "application/json",
     "HTTP 404 Not Found", "not the backend's base URL"),
    (200, b"<html><body>Sign in</body></html>\x1b[31m", "text/html",
     "HTTP 200 with body '<html><body>Sign in</body></html>\\x1b[31m', not a JSON object",
     "another service"),
    (200, b"[1, 2]", "application/json", "HTTP 200 with body '[1, 2]'", "another service"),
    (502, b"", "text/plain", "HTTP 502 Bad Gateway with an empty body", "backoff"),
])
def test_an_answer_that_is_not_health_names_code_and_body(
        tmp_path: Path, health: Health, capsys: pytest.CaptureFixture[str], code: int,
        body: bytes, content_type: str, shown: str, meaning: str) -> None:
    health.answer(code, body, content_type)
    exit_code, message = health_step(tmp_path, health, capsys)
    assert exit_code == exits.UNREACHABLE
    assert shown in message and meaning in message
    assert f"{health.url}/health" in message and '{"status": "ok", ...}' in message


def test_a_long_answer_is_cut_and_never_shows_the_key(
        tmp_path: Path, health: Health, capsys: pytest.CaptureFixture[str]) -> None:
    # A proxy echoing the request back would print the agent's own key.
    echoed = f"GET /health\nAuthorization: Bearer {KEY}\nX-Token: {KEY}\n".encode()
    health.answer(500, echoed + b"x" * 100_000, "text/plain")
    code, message = health_step(tmp_path, health, capsys)
    assert code == exits.UNREACHABLE
    assert KEY not in message and "Bearer ***" in message
    assert "xxx..." in message and len(message) < 1000
