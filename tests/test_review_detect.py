"""Defects found by review in detection (what is detected and whom it is charged to)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from healert_webhook.cluster.meta import Meta
from healert_webhook.cluster.view import Store, View
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


def test_a_deleted_object_never_vanishes_from_the_view_for_a_reader() -> None:
    """Readers run on other threads with no lock (view.py): between any two steps of the
    writer's delete, a reader must find the object live or as its tombstone. Missing
    both, resolution answers `unknown` and the event is charged by the name rules
    instead of the object's label. The reader here looks at the one point inside
    `delete` where the writer hands over to `_bury`."""
    seen: list[Meta | None] = []

    class Watched(View):
        def _bury(self, store: Store, meta: Meta) -> None:
            seen.append(self.get("pods", meta.namespace, meta.name))  # a reader, meanwhile
            super()._bury(store, meta)

    view = Watched(600.0)
    pod = Meta("Pod", "shop", "orders-7d9f8b6c4-xkj2p", "u1", "orders-7d9f8b6c4-",
               labels=(("backstage.io/kubernetes-id", "orders"),), annotations=(),
               owners=(), managers=())
    view.put("pods", pod)
    view.delete("pods", pod)
    assert seen and seen[0] is not None
    assert view.get("pods", "shop", pod.name) is not None  # its tombstone, afterwards
