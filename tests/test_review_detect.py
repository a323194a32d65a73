"""Defects found by review in detection (what is detected and whom it is charged to)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from healert_webhook.detect import Detector
from healert_webhook.records import Stats

from support.events import exec_ws


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
