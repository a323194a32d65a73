"""Who may post audit events: accepted bearer tokens and allowed client certificate names.

TLS itself (tls.py) has already checked that a client certificate chains to the client CA;
here a request is checked against an allow-list of the certificate's names and against the
accepted tokens. Both answer with a bounded reason, never with what was presented. A
request that passed tells its connection (`mark_authenticated`): from then on the
connection gate never closes it to make room for another.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healert_webhook.config import Settings, env
from healert_webhook.filewatch import FileWatch, read_regular
from healert_webhook.protocol import AUTHENTICATED_EXTENSION, PEER_EXTENSION

log = logging.getLogger(__name__)


def allow_list(names: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The configured client names, case-folded for `names_allowed`."""
    return frozenset(name.casefold() for name in names)


def names_allowed(names: tuple[str, ...], allowed: frozenset[str]) -> bool:
    """True when no allow-list is set or one of `names` is on it (case-insensitive).

    `allowed` comes from `allow_list`.
    """
    if not allowed:
        return True
    return any(name.casefold() in allowed for name in names)


def request_names(scope: Mapping[str, Any]) -> tuple[str, ...]:
    """The verified client certificate names the protocol put into a request's scope."""
    peer = (scope.get("extensions") or {}).get(PEER_EXTENSION)
    return tuple(peer["names"]) if peer else ()


def mark_authenticated(scope: Mapping[str, Any]) -> None:
    """The request passed authentication: its connection is proven (protocol.py)."""
    offer = (scope.get("extensions") or {}).get(AUTHENTICATED_EXTENSION)
    if offer is not None:
        offer["call"]()


class TokenError(ValueError):
    """The token file cannot be used; the message says why (never the tokens)."""


def parse_tokens(text: str) -> list[bytes]:
    """Tokens of a token file: one per line, blank lines and `#` comments ignored."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token.encode("utf-8"))
    return tokens


class TokenAuth:
    """The accepted bearer tokens: the token file's lines plus HEALERT_WEBHOOK_TOKEN.

    Several tokens are accepted at once, so a rotation can add the new token, roll the
    apiserver over, then drop the old one. The file is re-read when it changes.
    """

    def __init__(self, path: Path | None, env_token: str | None) -> None:
        self.path = path
        self._env = [env_token.strip().encode("utf-8")] if env_token and env_token.strip() \
            else []
        self._watch = FileWatch(path) if path is not None else None
        self._file: list[bytes] = self._read() if path is not None else []
        if not self.tokens:
            raise TokenError(f"{env('webhook_token_file')} {path}: holds no token")

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuth | None:
        """Tokens from the token file and HEALERT_WEBHOOK_TOKEN; None when neither is set."""
        env_token = settings.webhook_token
        if settings.webhook_token_file is None and not (env_token and env_token.strip()):
            return None
        return cls(settings.webhook_token_file, env_token)

    @property
    def tokens(self) -> list[bytes]:
        """Every token accepted right now."""
        return self._file + self._env

    def _read(self) -> list[bytes]:
        """The file's tokens; TokenError when it cannot be used. Never blocks on a FIFO
        or a device put at the path (read_regular refuses them at once)."""
        assert self.path is not None
        limit = 1024 * 1024  # a file of tokens, one a line: far more than any needs
        try:
            raw = read_regular(self.path, limit)
            if len(raw) > limit:
                raise TokenError(f"{env('webhook_token_file')} {self.path}: larger than "
                                 f"{limit} bytes")
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise TokenError(f"{env('webhook_token_file')} {self.path}: {why}") from exc
        return parse_tokens(text)

    def reload(self, force: bool = False) -> bool:
        """Re-read the token file if it changed (blocking); keep the old tokens if unusable."""
        if self._watch is None or not self._watch.changed(force):
            return False
        try:
            tokens = self._read()
        except TokenError as exc:
            log.error("token file reload failed, keeping the previous tokens: %s", exc)
            self._watch.forget()
            return False
        if not tokens and not self._env:
            log.error("token file %s now holds no token, keeping the previous tokens",
                      self.path)
            return False
        self._file = tokens  # one assignment: a request sees the old list or the new one
        log.info("webhook tokens reloaded from %s: %d accepted", self.path, len(tokens))
        return True

    def check(self, authorization: bytes | None) -> str | None:
        """None when the Authorization header carries an accepted token, else the reason."""
        if not authorization:
            return "missing_token"
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "missing_token"
        token = token.strip()
        ok = False
        for accepted in self.tokens:  # compare against all: timing says nothing of which
            ok |= hmac.compare_digest(token, accepted)
        return None if ok else "bad_token"
