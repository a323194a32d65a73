"""The values of a rule description's tokens for one detected request.

Most come from the event's objectRef, verb and actor. Three come from the request URI's
query, read once per detected request and bounded:

- `{command}`: every `command=` parameter of an exec (kubectl sends one per argument;
  the kubelet's own API through `nodes/proxy` takes the same), percent-decoded, joined
  with spaces, cut to MAX_COMMAND characters, with values that look like secrets
  replaced by `***` (see `redact`);
- `{container}`: the `container=` parameter of an exec or attach;
- `{field_manager}`: the `fieldManager=` parameter of a write (`kubectl-edit`,
  `kubectl-set`, `kubectl-rollout`, `kubectl-annotate`...); without one, the user
  agent's first word, the name the apiserver itself records as the manager then.

A token without a value is `-`. Descriptions are made safe (printable ASCII, bounded)
where they are rendered (detect.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from healert_webhook import audit

if TYPE_CHECKING:
    from healert_webhook.rules.candidate import Candidate

TOKENS = ("actor", "resource", "name", "namespace", "verb", "subresource", "code", "workload",
          "command", "container", "field_manager")
MAX_QUERY = 16 * 1024   # characters of a request URI's query read for the tokens
MAX_COMMAND = 1024      # characters of a command kept before it is redacted and cut
REDACTED = "***"
NONE = "-"
_EMPTY: dict[str, Any] = {}
# Parts of a name (a flag, a variable, a header) that mark its value as secret.
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "api_key",
                 "api-key", "accesskey", "access_key", "access-key", "private", "credential",
                 "auth", "pwd", "cookie")
_SECRET_NAMES = frozenset({"pass", "key"})
# Words after which the next word is a credential (an Authorization header's scheme).
_SCHEMES = frozenset({"bearer", "basic", "token"})
# user:password@ in a URL; a JSON Web Token; both linear to match.
_URL_CREDENTIALS = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


class Tokens(dict[str, str]):
    """Every token's raw value for one detected request. Those read from the request
    URI's query are computed when a description first asks for one of them."""

    def __init__(self, cand: Candidate, workload: str) -> None:
        actor, code = cand.actor, cand.code
        super().__init__(
            actor=actor.name or "unknown",
            resource=cand.resource,
            name=cand.name or carried_name(cand.event),
            namespace=cand.namespace or NONE,
            verb=cand.verb,
            subresource=cand.subresource,
            code=str(code) if code is not None else "",
            workload=workload,
        )
        self._event = cand.event

    def __missing__(self, key: str) -> str:
        if key not in _FROM_QUERY:
            raise KeyError(key)
        params = query(self._event)
        self.update(
            command=command(params) or NONE,
            container=_first(params, "container") or NONE,
            field_manager=_first(params, "fieldManager") or _agent_product(self._event)
            or NONE,
        )
        return self[key]


_FROM_QUERY = frozenset({"command", "container", "field_manager"})


def description_tokens(cand: Candidate, workload: str) -> dict[str, str]:
    """Every token's raw value for one detected request (`workload`: its resolved name)."""
    return Tokens(cand, workload)


def carried_name(event: dict[str, Any]) -> str:
    """The name of the carried object, else its generateName: a create whose name the
    apiserver generates has none in objectRef."""
    meta = audit.carried_metadata(event) or _EMPTY
    for key in ("name", "generateName"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


_PARAMS = frozenset({"command", "container", "fieldManager"})


def query(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The request URI's query parameters the tokens read (command, container,
    fieldManager), decoded, from its first MAX_QUERY characters, in order."""
    uri = event.get("requestURI")
    if not isinstance(uri, str) or "?" not in uri:
        return []
    found = []
    for part in uri.partition("?")[2][:MAX_QUERY].split("&"):
        key, _, value = part.partition("=")
        if key in _PARAMS:
            found.append((key, unquote_plus(value, errors="replace")))
    return found


def _first(params: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in params if key == name), "")


def _agent_product(event: dict[str, Any]) -> str:
    """`kubectl` of `kubectl/v1.37.2 (linux/amd64) ...`."""
    return audit.user_agent(event).partition("/")[0].strip()


def command(params: list[tuple[str, str]]) -> str:
    """Every `command` parameter, joined with spaces, bounded and redacted."""
    joined = " ".join(value for key, value in params if key == "command")
    return redact(joined[:MAX_COMMAND]) if joined else ""


def _secret_name(name: str) -> bool:
    """Whether a flag's, variable's or header's name marks its value as secret."""
    bare = name.strip("'\"").lstrip("-").rstrip(":").lower()
    return bare in _SECRET_NAMES or bare.endswith("key") \
        or any(part in bare for part in _SECRET_PARTS)


def _unclosed(text: str) -> str:
    """The quote `text` opens and leaves open, or ''."""
    for quote in ("'", '"'):
        if text.startswith(quote) and quote not in text[1:]:
            return quote
    return ""


def _header(word: str) -> tuple[str, str] | None:
    """(the header, its value) when `word` is a header whose name marks it secret, alone
    or as a flag's value (`X-Api-Key:v`, `--header=X-Api-Key:`); None otherwise."""
    text = word.partition("=")[2] if word.startswith("-") else word
    name, colon, value = text.partition(":")
    if not colon or value.startswith("//") or not _secret_name(name):
        return None
    return text, value


def redact(text: str) -> str:
    """`text` (a command line) with values that look like secrets replaced by `***`.

    Word by word: `NAME=value` and `--name value` where the name holds password, secret,
    token, key, auth... (`PGPASSWORD=x`, `--token=x`, `--password x`); the word after
    `Bearer`, `Basic` or `Token` and after a header name such as `X-Api-Key:`, or the
    value glued to that name (`X-Api-Key:v`, `--header=X-Api-Key: v`); a URL's
    `user:password@`; a JSON Web Token anywhere. A quoted value is redacted up to its
    closing quote. Over-redaction (a path after `--key`) is the price of never showing
    one; runs of spaces become one.
    """
    words = text.split()
    out: list[str] = []
    hide_next = False
    closing = ""  # inside a redacted quoted value: the quote that ends it
    for word in words:
        if closing:
            if closing in word:
                closing = ""
            continue
        if hide_next:
            if word.strip("'\"").lower() in _SCHEMES:  # `Authorization: Bearer x`
                out.append(word)
                continue
            hide_next = False
            if not word.startswith("-"):
                closing = _unclosed(word)
                out.append(REDACTED)
                continue
        name, sep, value = word.partition("=")
        if sep and value and _secret_name(name):
            closing = _unclosed(value)
            out.append(f"{name}={REDACTED}")
            continue
        header = _header(word)
        if header is not None:  # `X-Api-Key:v`, `--header=X-Api-Key:`, `Authorization:Bearer`
            named, value = header
            bare = value.strip("'\"")
            if not bare or bare.lower() in _SCHEMES:
                hide_next = True
                out.append(word)
            else:
                closing = _unclosed(named) or _unclosed(value)
                out.append(word[: len(word) - len(value)] + REDACTED)
            continue
        lowered = word.strip("'\"").lower()
        if lowered in _SCHEMES or (not sep and (word.startswith("-") or word.endswith(":"))
                                   and _secret_name(word)):
            hide_next = True
        out.append(_JWT.sub(REDACTED, _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", word)))
    return " ".join(out)
