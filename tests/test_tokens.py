"""tokens.py (the description tokens) and the key of a kubectl session (audit.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from healert_webhook import audit, tokens
from healert_webhook.detect import Detector
from healert_webhook.records import Stats
from healert_webhook.rules.candidate import Candidate
from healert_webhook.rules.matchers import DEFAULT_GITOPS

from support.events import audit_event, exec_ws, secret_get


def candidate(event: dict[str, Any]) -> Candidate:
    return Candidate(event, event.get("objectRef") or {}, DEFAULT_GITOPS)


def with_query(event: dict[str, Any], query: str) -> dict[str, Any]:
    event["requestURI"] += "?" + query
    return event


def test_every_token_has_a_value() -> None:
    event = with_query(exec_ws(), "command=ls&command=-la&container=main")
    found = tokens.description_tokens(candidate(event), "payments-api")
    values = {name: found[name] for name in tokens.TOKENS}  # the query's on demand
    assert values["command"] == "ls -la" and values["container"] == "main"
    assert values["field_manager"] == "kubectl"  # no fieldManager: the client's name
    bare = tokens.description_tokens(candidate(secret_get(user_agent="")), "x")
    with pytest.raises(KeyError):
        bare["nope"]
    assert (bare["command"], bare["container"], bare["field_manager"]) == ("-", "-", "-")


@pytest.mark.parametrize("text,shown", [
    ("PGPASSWORD=pw1 psql --password pw2 -h db", "PGPASSWORD=*** psql --password *** -h db"),
    ("curl -H 'Authorization: Bearer tok3' --token=tok4 http://x",
     "curl -H 'Authorization: Bearer *** --token=*** http://x"),
    ("psql --password -h db", "psql --password -h db"),   # a flag without a value
    ("X-Api-Key: k1 rest", "X-Api-Key: *** rest"),
    ("--client-secret='a b c'; echo done", "--client-secret=*** echo done"),
    ("--passphrase \"a b\" next", "--passphrase *** next"),
    ("git clone https://u:p4ss@git.example.com/r.git", "git clone https://u:***@git.example.com/r.git"),
    ("echo eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig", "echo ***"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
    ("AWS_SECRET_ACCESS_KEY=x aws s3 ls", "AWS_SECRET_ACCESS_KEY=*** aws s3 ls"),
    ("ls   -la\t/tmp", "ls -la /tmp"),
    ("", ""),
])
def test_values_that_look_like_secrets_are_redacted(text: str, shown: str) -> None:
    assert tokens.redact(text) == shown


def test_the_query_read_is_bounded() -> None:
    event = exec_ws()
    event["requestURI"] += "?command=" + "x" * (tokens.MAX_QUERY * 4) + "&command=tail"
    params = tokens.query(event)
    assert len(params) == 1 and len(params[0][1]) < tokens.MAX_QUERY
    assert len(tokens.command(params)) <= tokens.MAX_COMMAND
    assert tokens.query({"requestURI": ["not", "text"]}) == []


def test_percent_and_plus_decoding_and_invalid_utf8() -> None:
    params = tokens.query(with_query(exec_ws(), "command=a%20b+c&command=%FF%2F&container="))
    assert tokens.command(params) == "a b c \ufffd/"


# --- one key per kubectl session attempt ------------------------------------------------

def session(verb: str, at: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("user", "dave")
    kw.setdefault("code", 403)
    return audit_event(verb, "pods", kw.pop("pod", "web-0"), "shop",
                       subresource=kw.pop("sub", "exec"), received=at, **kw)


def key(event: dict[str, Any], rule: str = "kubectl-exec") -> str:
    return audit.dedup_key(event, event["user"]["username"], event["verb"], rule)


def test_a_websocket_attempt_and_its_spdy_fallback_share_one_key() -> None:
    ws = session("get", "2026-11-26T10:04:32.904914Z", audit_id="a")
    spdy = session("create", "2026-11-26T10:04:32.909807Z", audit_id="b")
    assert audit.session_window(ws) == "2026-11-26T10:04:3"
    assert key(ws) == key(spdy)
    assert key(ws) != key(ws, "other-rule")
    later = session("create", "2026-11-26T10:04:40.000000Z")  # the next ten seconds
    assert key(later) != key(ws)
    for other in (session("get", "2026-11-26T10:04:33Z", user="erin"),
                  session("get", "2026-11-26T10:04:33Z", pod="web-1"),
                  session("get", "2026-11-26T10:04:33Z", sub="portforward")):
        assert key(other) != key(ws)


def test_what_is_not_a_session_keeps_its_request_key() -> None:
    logs = session("get", "2026-11-26T10:04:32Z", sub="log")
    assert audit.session_window(logs) is None
    broken = session("get", "yesterday")
    assert audit.session_window(broken) is None  # no usable time: the request's own key
    assert key(broken) != key(dict(broken, auditID="other"))


def test_a_websocket_session_that_succeeded_is_its_own() -> None:
    """Two execs of one person into one pod a second apart, both over a WebSocket that
    was not refused: two sessions. The same over SPDY (older kubectl, or WebSockets
    turned off) is counted once per ten seconds: SPDY is also what kubectl retries with."""
    first = session("get", "2026-11-26T10:04:31.000000Z", code=101, audit_id="one")
    second = session("get", "2026-11-26T10:04:32.000000Z", code=101, audit_id="two")
    assert audit.session_window(first) is None
    assert key(first) != key(second)
    spdy = [session("create", f"2026-11-26T10:04:3{n}.000000Z", code=101, audit_id=f"s{n}")
            for n in (1, 2)]
    assert key(spdy[0]) == key(spdy[1])


def exec_with_command(*argv: str) -> dict[str, object]:
    """`kubectl exec pod -- argv...` as the apiserver audits it: one `command=` per
    argument in the request URI, percent-encoded."""
    event = exec_ws()
    query = "&".join(f"command={quote(arg, safe='')}" for arg in argv)
    event["requestURI"] = f"{event['requestURI']}?container=main&{query}"
    return event


# Header forms curl, wget and httpie accept, each with an opaque (non-JWT) credential.
@pytest.mark.parametrize("argv,secret", [
    (("curl", "-H", "X-Vault-Token:hvs.opaque1secret", "https://vault:8200/v1/kv"),
     "opaque1secret"),
    (("curl", "-H", "Authorization:Bearer opaque2secret", "https://api"), "opaque2secret"),
    (("wget", "--header=PRIVATE-TOKEN: glpat-opaque3secret", "https://gitlab/api"),
     "opaque3secret"),
    (("http", "GET", "https://api", "X-API-Key:opaque4secret"), "opaque4secret"),
])
def test_exec_description_hides_a_credential_header_in_every_form(
        detector: Detector, argv: tuple[str, ...], secret: str) -> None:
    stats = Stats()
    found = detector.detect([exec_with_command(*argv)], stats)
    assert [f.rule for f in found] == ["kubectl-exec"]
    description = found[0].event["description"]
    assert argv[0] in description  # the command is shown...
    assert secret not in description  # ...but not the credential it passes
