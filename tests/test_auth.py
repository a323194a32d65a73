"""Bearer tokens of the webhook: the token file, its problems and its rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from healert_webhook.auth import TokenAuth, TokenError, parse_tokens
from healert_webhook.config import build_settings


def test_token_file_problems(tmp_path: Path) -> None:
    assert parse_tokens(" a \n#c\n\n b\n") == [b"a", b"b"]
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(TokenError, match="holds no token"):
        TokenAuth(tmp_path / "empty", None)
    with pytest.raises(TokenError, match="is a character device"):
        TokenAuth(Path("/dev/null"), None)  # only regular files are read
    with pytest.raises(TokenError, match="No such file"):
        TokenAuth(Path("/nonexistent/tokens"), None)
    assert TokenAuth.from_settings(build_settings(environ={})) is None
    auth = TokenAuth.from_settings(build_settings(environ={"HEALERT_WEBHOOK_TOKEN": "t"}))
    assert auth is not None and auth.check(b"Bearer t") is None
    assert auth.check(b"Basic t") == "missing_token"


def test_token_file_emptied_keeps_the_previous_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("t1\n")
    auth = TokenAuth(token_file, None)
    token_file.write_text("")
    assert auth.reload() is False
    assert auth.check(b"Bearer t1") is None
