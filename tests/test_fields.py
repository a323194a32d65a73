"""rules/fields.py: paths, and what a create, an update, a merge patch, a JSON patch and a
server-side apply show of one field."""

from __future__ import annotations

from typing import Any

import pytest

from healert_webhook.rules import fields
from healert_webhook.rules.fields import (
    EACH,
    UNKNOWN,
    bodies,
    json_patch,
    merge_touches,
    seen,
    walk,
)
from healert_webhook.rules.fields import parse_path as path


@pytest.mark.parametrize("text,tokens", [
    ("spec.suspend", ("spec", "suspend")),
    ('metadata.labels."pod-security.kubernetes.io/enforce"',
     ("metadata", "labels", "pod-security.kubernetes.io/enforce")),
    ("spec.match[].excludedNamespaces", ("spec", "match", EACH, "excludedNamespaces")),
    ("items[][]", ("items", EACH, EACH)),
    ('"a\\"b".c', ('a"b', "c")),
    ("metadata.labels.app/name", ("metadata", "labels", "app/name")),
])
def test_paths(text: str, tokens: tuple[Any, ...]) -> None:
    assert path(text).tokens == tokens


@pytest.mark.parametrize("text,message", [
    ("", "an empty path names no field"),
    ("spec.", "a key is missing at the end"),
    (".spec", "a key is missing at character 1"),
    ("spec[0]", "unexpected '[' at character 5"),
    ('spec."x', "a quoted key is not closed"),
    ('spec.""', "an empty quoted key"),
    ("a" * 300, "longer than 256 characters"),
    (".".join(["a"] * 40), "more than 32 keys"),
    ('spec."a"b', "unexpected 'b' at character 9"),
])
def test_bad_paths_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        path(text)


def test_walk_follows_keys_and_enters_lists_only_at_each() -> None:
    doc = {"spec": {"match": [{"excludedNamespaces": ["a"]}, {"processes": ["*"]},
                              "junk", {"excludedNamespaces": None}]}}
    assert walk(doc, path("spec.match[].excludedNamespaces").tokens) == [["a"]]
    assert walk(doc, path("spec.match.excludedNamespaces").tokens) == []
    assert walk({"spec": {"suspend": None}}, ("spec", "suspend")) == []
    assert walk("text", ("spec",)) == []


@pytest.mark.parametrize("patch,touched", [
    ({"spec": {"suspend": True}}, True),
    ({"spec": {"suspend": None}}, True),
    ({"spec": None}, True),                       # removes everything below
    ({"spec": "replaced"}, True),
    ({"spec": {"interval": "5m"}}, False),
    ({"metadata": {"labels": {"team": "a"}}}, False),
    ({"spec": {"$patch": "replace", "interval": "5m"}}, True),
    ({}, False),
])
def test_a_merge_patch_touches_what_it_states(patch: dict[str, Any], touched: bool) -> None:
    assert merge_touches(patch, ("spec", "suspend")) is touched


def test_a_merge_patch_of_a_list_touches_every_element() -> None:
    tokens = path("spec.match[].excludedNamespaces").tokens
    assert merge_touches({"spec": {"match": [{"processes": ["*"]}]}}, tokens)
    assert not merge_touches({"spec": {"sync": {}}}, tokens)


AUTOMATED = path("spec.syncPolicy.automated").tokens


@pytest.mark.parametrize("ops,state", [
    ([{"op": "remove", "path": "/spec/syncPolicy/automated"}], []),
    ([{"op": "remove", "path": "/spec/syncPolicy"}], []),
    ([{"op": "add", "path": "/spec/syncPolicy/automated", "value": {"prune": True}}],
     [{"prune": True}]),
    ([{"op": "replace", "path": "/spec", "value": {"syncPolicy": {}}}], []),
    ([{"op": "replace", "path": "", "value": {"spec": {"syncPolicy": {"automated": {}}}}}],
     [{}]),
    ([{"op": "add", "path": "/spec/syncPolicy/automated/prune", "value": False}], UNKNOWN),
    ([{"op": "replace", "path": "/spec/source/targetRevision", "value": "v2"}], None),
    ([{"op": "test", "path": "/spec/syncPolicy/automated", "value": {}}], None),
    ([{"op": "move", "from": "/spec/syncPolicy/automated", "path": "/spec/x"}], []),
    ([{"op": "copy", "from": "/spec/x", "path": "/spec/syncPolicy/automated"}], UNKNOWN),
    # the last operation that touches the field decides
    ([{"op": "remove", "path": "/spec/syncPolicy/automated"},
      {"op": "add", "path": "/spec/syncPolicy/automated", "value": {"a": 1}}], [{"a": 1}]),
    (["junk", {"op": "remove"}, {"op": "remove", "path": 7},
      {"op": "remove", "path": "no-slash"}], None),
])
def test_a_json_patch_is_read_operation_by_operation(ops: list[Any], state: Any) -> None:
    assert json_patch(ops, AUTOMATED) == state


def test_json_pointer_escapes_and_list_elements() -> None:
    label = path('metadata.labels."pod-security.kubernetes.io/enforce"').tokens
    assert json_patch([{"op": "remove", "path":
                        "/metadata/labels/pod-security.kubernetes.io~1enforce"}], label) == []
    assert json_patch([{"op": "remove", "path": "/metadata/labels/pod-security.kubernetes.io"
                        "/enforce"}], label) is None  # an unescaped '/' is another key
    excluded = path("spec.match[].excludedNamespaces").tokens
    # one element of the list: the others may still hold the field
    assert json_patch([{"op": "remove", "path": "/spec/match/0/excludedNamespaces"}],
                      excluded) == UNKNOWN
    assert json_patch([{"op": "add", "path": "/spec/match/-", "value":
                        {"excludedNamespaces": ["x"]}}], excluded) == [["x"]]
    assert json_patch([{"op": "add", "path": "/spec/match/key", "value": {}}],
                      excluded) is None  # not an index: not the list's element


def event(verb: str, request: Any = None, response: Any = None) -> dict[str, Any]:
    found: dict[str, Any] = {"verb": verb}
    if request is not None:
        found["requestObject"] = request
    if response is not None:
        found["responseObject"] = response
    return found


def test_what_the_event_shows_of_its_object() -> None:
    whole = {"apiVersion": "v1", "kind": "Service", "spec": {"type": "NodePort"}}
    assert bodies(event("create", whole), "create") == (whole, "whole", None)
    assert bodies(event("patch", [{"op": "x"}]), "patch").form == "json"
    assert bodies(event("patch", {"spec": {}}), "patch").form == "merge"
    assert bodies(event("patch", whole), "patch").form == "whole"  # server-side apply
    # a delete's DeleteOptions and a Status answer are not the object
    assert bodies(event("delete", {"kind": "DeleteOptions"}, {"kind": "Status"}),
                  "delete") is fields.NO_BODIES
    assert bodies(event("delete", None, whole), "delete") == (None, "none", whole)
    assert bodies(event("get", {"a": 1}), "get") is fields.NO_BODIES


def test_the_result_decides_when_the_request_touches_the_field() -> None:
    tokens = ("spec", "suspend")
    result = {"kind": "Kustomization", "spec": {"suspend": True}}
    touching = bodies(event("patch", {"spec": {"suspend": True}}, result), "patch")
    assert seen(touching, tokens) == ([True], "resulting object")
    other = bodies(event("patch", {"spec": {"interval": "1m"}}, result), "patch")
    assert seen(other, tokens) == (None, "request")
    alone = bodies(event("patch", {"spec": {"suspend": True}}), "patch")
    assert seen(alone, tokens) == ([True], "request")
    below = bodies(event("patch", [{"op": "add", "path": "/spec/suspend/x", "value": 1}]),
                   "patch")
    assert seen(below, tokens) == (UNKNOWN, "request")
    update = bodies(event("update", {"kind": "K", "apiVersion": "v", "spec": {}}), "update")
    assert seen(update, tokens) == ([], "request")  # an update states the whole object


def test_a_walk_costs_the_object_it_walks_not_more() -> None:
    wide = {"items": [{"x": [{"y": i} for i in range(200)]} for _ in range(200)]}
    assert len(walk(wide, path("items[].x[].y").tokens)) == 40_000
    deep: Any = {"a": 1}
    for _ in range(5000):  # far deeper than any path: never recursed into
        deep = {"n": deep}
    found = walk(deep, path("n.n.n").tokens)
    assert len(found) == 1 and found[0] is deep["n"]["n"]["n"]
