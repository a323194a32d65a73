"""The field pass answers what `Index.rule_out` answers on orjson's reading of each event.

Compared over every real fixture, the three benchmark streams (as log lines and as the
items of EventList bodies), and hypothesis-made events that are hostile but valid JSON:
the five fields mistyped, missing, written twice or with escaped names, strings holding
the very bytes of the fields, nested objects with the same keys, another field order,
bytes that are not UTF-8, lines cut short. Two rule sets: the shipped one, and every
shipped rule enabled with the agent's own namespace excluded.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healert_webhook import fieldpass, nativescan
from healert_webhook.audit import BadDocument, batch_items
from healert_webhook.config import Settings
from healert_webhook.fieldpass import FieldPass, Unreadable
from healert_webhook.index import Index, Undecidable
from healert_webhook.pipeline import make_detector
from healert_webhook.prefilter import Prefilter
from healert_webhook.rules import load_rules

from support import workload
from support.events import event_list, exec_event, noise_event, smuggling_event
from support.fixture_events import event_lines
from support.paths import ROOT


def _index(all_rules: bool, tmp: Path) -> Index:
    text = (ROOT / "rules.yaml").read_text()
    if all_rules:
        text = text.replace("enabled: false", "enabled: true")
    path = tmp / ("all.yaml" if all_rules else "shipped.yaml")
    path.write_text(text)
    detector = make_detector(load_rules(path), Settings(k8s_namespace="healert-system"))
    return detector.index


@pytest.fixture(scope="module", params=["shipped", "all"])
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Index:
    """A rule index: the shipped rules, or every rule enabled."""
    return _index(request.param == "all", tmp_path_factory.mktemp("fieldpass"))


def expected(index: Index, raw: bytes | memoryview) -> str | None:
    """`rule_out`'s skip reason on orjson's reading of `raw`, or None (parse it)."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    try:
        found = index.rule_out(event)
    except Undecidable:
        return None
    return found if isinstance(found, str) else None


def passes(index: Index) -> list[FieldPass]:
    """The pure field pass, and the one the sources use when the native scanner is built
    (then both are compared with orjson's reading in the same run)."""
    found = [FieldPass(index)]
    if nativescan.native is not None:
        found.append(FieldPass.for_index(index))
    return found


def decide_alike(index: Index, raws: list[bytes]) -> None:
    """Each raw event, and the items of an EventList of those that are JSON, by the pure
    field pass and by the native one where it is built."""
    for fp in passes(index):
        _decided_alike(fp, index, raws)


def _decided_alike(fp: FieldPass, index: Index, raws: list[bytes]) -> None:
    for raw in raws:
        assert fp.reason(raw) == expected(index, raw), raw[:400]
    whole = [raw for raw in raws if _is_json(raw)]
    if whole:
        body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[' \
            + b",".join(whole) + b"]}\n"
        items = fp.split(body)
        assert [orjson.loads(memoryview(item)) for item in items] == \
            batch_items(orjson.loads(body))
        for item, raw in zip(items, whole, strict=True):
            assert fp.reason(item) == expected(index, raw), raw[:400]
        sorted_alike(fp, index, body, whole)


def sorted_alike(fp: FieldPass, index: Index, body: bytes, raws: list[bytes]) -> None:
    """The webhook's reading of a body of `raws` (`sort_body`, counted once a body):
    the candidates are the items `rule_out` does not settle, the others counted."""
    answers = [expected(index, raw) for raw in raws]
    counted: Counter[str] = Counter()
    total, candidates = fp.sort_body(body, len(raws), counted)
    assert total == len(raws)
    assert [i for i, _item in candidates] == [i for i, a in enumerate(answers) if a is None]
    assert [orjson.loads(memoryview(item)) for _i, item in candidates] == \
        [orjson.loads(raws[i]) for i, _item in candidates]
    assert counted == Counter(a for a in answers if a is not None)


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def fixture_lines(shared: Path) -> list[bytes]:
    """The shared fixtures' events and those a real v1.37 apiserver wrote."""
    return event_lines(shared, ROOT / "tests" / "fixtures" / "apiserver-1.37")


def test_every_fixture_decides_as_rule_out(index: Index, fixtures_dir: Path) -> None:
    lines = fixture_lines(fixtures_dir)
    assert len(lines) > 100
    decide_alike(index, lines)
    fp = FieldPass(index)
    assert {fp.reason(line) for line in lines} >= {None, "no_rule", "system_actor"}


@pytest.mark.parametrize("name", workload.STREAMS)
def test_the_benchmark_streams_decide_as_rule_out(index: Index, name: str) -> None:
    work = workload.stream(name, 3000, match_ratio=0.05, seed=11)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    for fp in passes(index):
        assert [fp.reason(line) for line in lines] == [expected(index, line) for line in lines]
        for body in work.batches(400):
            items = fp.split(body)
            assert [orjson.loads(memoryview(item)) for item in items] == \
                orjson.loads(body)["items"]
            assert [fp.reason(item) for item in items] == \
                [expected(index, memoryview(item)) for item in items]
            sorted_alike(fp, index, body, [bytes(item) for item in items])


def test_it_answers_as_simdjsons_prefilter_on_what_the_apiserver_writes(
        tmp_path: Path) -> None:
    """Where the pre-filter of today reads a field the same way (every field once), the
    two passes agree event for event."""
    index = _index(True, tmp_path)
    prefilter = Prefilter(make_detector(load_rules(tmp_path / "all.yaml"),
                                        Settings(k8s_namespace="healert-system")))
    fp = FieldPass(index)
    lines = [line.rstrip(b"\n") for line in workload.stream("realistic", 4000).lines()]
    assert [fp.reason(line) for line in lines] == [prefilter.skip(line) for line in lines]


def test_an_object_shaped_like_events_adds_and_hides_none(index: Index) -> None:
    body = event_list([smuggling_event(), exec_event(1, tag="real")])
    assert body.count(b'},{"level":"') == 3  # one real boundary, two inside the object
    fp = FieldPass(index)
    items = fp.split(body)
    assert len(items) == 2
    assert fp.reason(items[0]) == expected(index, memoryview(items[0])) is not None
    assert fp.reason(items[1]) is None  # the real exec: parse it


def test_a_field_written_twice_is_read_as_orjson_reads_it(index: Index) -> None:
    """The last one, unlike simdjson's reading (the first)."""
    event = exec_event(3, tag="twice")
    del event["stage"]
    event = {"stage": "RequestReceived", **event}
    raw = orjson.dumps(event)[:-1] + b',"stage":"ResponseComplete"}'
    fp = FieldPass(index)
    assert fp.reason(raw) is None == expected(index, raw) is None
    user_twice = orjson.dumps(exec_event(4))[:-1] + b',"user":{"username":"system:node:n"}}'
    assert fp.reason(user_twice) == expected(index, user_twice) == "system_actor"


def test_bytes_that_are_not_utf8_are_never_ruled_out(index: Index) -> None:
    fp = FieldPass(index)
    lease = orjson.dumps(noise_event(1))
    ruled = expected(index, lease)
    assert ruled is not None and fp.reason(lease) == ruled
    for bad in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"):
        raw = lease.replace(b'"Metadata"', b'"Meta' + bad + b'data"')
        assert expected(index, raw) is None  # orjson refuses it
        assert fp.reason(raw) is None
        key = lease.replace(b'"level"', b'"lev' + bad + b'el"')
        assert fp.reason(key) is None
    unicode = lease.replace(b'"Metadata"', '"Métadata ☃"'.encode())
    assert fp.reason(unicode) == ruled  # valid UTF-8 that is not ASCII


def test_what_msgspec_refuses_orjson_decides(index: Index) -> None:
    fp = FieldPass(index)
    lease = orjson.dumps(noise_event(2))
    deep = lease[:-1] + b',"x":' + b"[" * 1010 + b"]" * 1010 + b"}"
    ruled = expected(index, deep)
    assert ruled is not None  # within orjson's nesting limit
    assert fp.reason(deep) == ruled
    deeper = lease[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert expected(index, deeper) is None and fp.reason(deeper) is None
    for junk in (b"", b" ", b"{", b'{"stage":}', b"[1]", b"5", b'{"a":NaN}', b"\xef\xbb\xbf{}"):
        assert fp.reason(junk) is None


def test_a_number_out_of_range_where_no_decision_reads_is_read_not_refused(
        index: Index) -> None:
    """The one difference from orjson (module docstring): the event is decided by its
    five fields, where orjson calls it unreadable; neither makes a friction event."""
    fp = FieldPass(index)
    lease = orjson.dumps(noise_event(3))
    raw = lease[:-1] + b',"requestObject":{"spec":{"replicas":1e400}}}'
    assert expected(index, raw) is None  # orjson refuses it
    assert fp.reason(raw) == expected(index, lease) is not None
    in_a_field = lease.replace(b'"update"', b"1e400")
    assert fp.reason(in_a_field) is None  # a field it reads: refused, orjson decides


def test_split_reads_each_shape_of_batch_as_batch_items(index: Index) -> None:
    fp = FieldPass(index)
    events = [noise_event(5), exec_event(6)]
    raws = [orjson.dumps(event) for event in events]
    for body in (event_list(events), b"[" + b",".join(raws) + b"]",
                 b' {"items":[' + b", ".join(raws) + b"]} \n"):
        items = fp.split(body)
        assert [orjson.loads(memoryview(item)) for item in items] == events
    one = raws[1]
    assert fp.split(one) == [one]  # one Event
    assert fp.split(b'{"kind":"EventList","items":null}') == []
    assert fp.split(b'{"kind":"EventList"}') == []
    with_id = b'{"auditID":"x","items":[1]}'
    assert fp.split(with_id) == [with_id]  # an Event that holds "items"
    with pytest.raises(BadDocument):
        fp.split(b'{"kind":"EventList","items":{"a":1}}')
    with pytest.raises(BadDocument):
        fp.split(b"5")
    for junk in (b"", b"{", b'{"items":[1,]}', b'[{"a":1e}]'):
        with pytest.raises(Unreadable):
            fp.split(junk)
    for shape in (b'{"kind":"EventList","items":{"a":1}}', b'{"kind":"EventList"}',
                  b'{"auditID":"x","items":[1]}', b"[]"):
        try:
            expected_items = batch_items(orjson.loads(shape))
        except BadDocument:
            continue
        assert len(fp.split(shape)) == len(expected_items)


def test_split_leaves_an_item_that_is_not_utf8_to_the_full_parse(index: Index) -> None:
    fp = FieldPass(index)
    good, bad = orjson.dumps(noise_event(7)), orjson.dumps(noise_event(8))
    bad = bad.replace(b'"Metadata"', b'"Meta\xffdata"')
    items = fp.split(event_list([good, bad]))
    assert isinstance(items[0], msgspec.Raw) and items[1] == bad
    assert [fp.reason(item) for item in items] == [expected(index, good), None]
    assert expected(index, good) is not None
    envelope = event_list([good]).replace(b'"metadata":{}', b'"metadata":{"x":"\xff"}')
    with pytest.raises(Unreadable):
        fp.split(envelope)  # outside every event: orjson refuses the body whole


def test_the_decisions_kept_stay_bounded(index: Index, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(fieldpass, "CACHE_ENTRIES", 50)
    fp = FieldPass(index)
    for i in range(400):
        event = noise_event(i)
        event["objectRef"]["namespace"] = f"ns-{i}"
        raw = orjson.dumps(event)
        assert fp.reason(raw) == expected(index, raw) is not None
        assert len(fp._settled) <= 50
    long = noise_event(1)
    long["objectRef"]["namespace"] = "n" * 10_000
    fp._settled.clear()
    assert fp.reason(orjson.dumps(long)) == expected(index, orjson.dumps(long)) is not None
    assert not fp._settled  # decided, not kept


def test_the_user_names_kept_stay_bounded(index: Index, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(fieldpass, "NAMES_KEPT", 20)
    monkeypatch.setattr(fieldpass, "_internal_of", {})
    fp = FieldPass(index)
    users = [f"system:serviceaccount:ns:sa-{i}" if i % 2 else f"person-{i}@example.com"
             for i in range(300)] + ["system:admin", "system:" + "x" * 10_000]
    raws = []
    for i, user in enumerate(users):
        event = exec_event(i) if i % 3 else noise_event(i)
        event["user"] = {"username": user}
        raws.append(orjson.dumps(event))
    body = event_list(raws)
    for raw in raws:
        assert fp.reason(raw) == expected(index, raw)
        assert len(fieldpass._internal_of) <= 20
    sorted_alike(fp, index, body, raws)
    assert len(fieldpass._internal_of) <= 20
    assert "system:" + "x" * 10_000 not in fieldpass._internal_of


def test_the_same_combination_is_decided_by_its_own_user(index: Index) -> None:
    """One cached combination, then users of every class: each gets rule_out's answer."""
    fp = FieldPass(index)
    users: list[Any] = [{"username": "alice"}, {"username": "system:node:n1"},
                        {"username": "system:admin"}, {"username": ""}, {}, None, "bob",
                        {"username": 5}, {"username": ["x"]}, [], {"username": None}]
    for user in users:
        for impersonated in (None, {}, {"username": "bob"}, "x", 0):
            event = exec_event(9, sub="exec")
            event["user"] = user
            if impersonated is not None:
                event["impersonatedUser"] = impersonated
            raw = orjson.dumps(event)
            assert fp.reason(raw) == expected(index, raw), (user, impersonated)


# -- hostile but valid JSON ------------------------------------------------------------

PATTERNS = ['","stage":"ResponseComplete', '","verb":"get', '"user":{"username":"alice"',
            '},{"level":"Metadata"', ',"objectRef":{"resource":"pods"', 'Object":',
            '"subresource":"exec"', '\\"', "\\", '"}', ",\"impersonatedUser\":{", "é",
            "\u2028", "\x00", "\ud7ff"]
FIELDS = ["stage", "verb", "user", "impersonatedUser", "objectRef"]
KEYS = [*FIELDS, "level", "auditID", "requestObject", "responseObject", "annotations",
        "resource", "subresource", "namespace", "username", "items", "kind"]
NAMES = ["ResponseComplete", "ResponseStarted", "RequestReceived", "Panic", "get", "create",
         "patch", "update", "list", "pods", "secrets", "deployments", "exec", "portforward",
         "status", "scale", "", "kube-system", "healert-system", "payments", "alice",
         "system:node:n1", "system:admin", "system:serviceaccount:a:b", "system:masters"]

texts = st.one_of(st.sampled_from(PATTERNS + NAMES), st.text(max_size=10))
scalars = st.one_of(texts, st.integers(-3, 3), st.integers(2**63, 2**70), st.booleans(),
                    st.none(), st.floats(allow_nan=False, allow_infinity=False))
nested = st.recursive(
    scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | texts, inner, max_size=4)), max_leaves=10)


def _base(rng: random.Random) -> dict[str, Any]:
    pick = rng.random()
    if pick < 0.3:
        return noise_event(rng.randrange(1000))
    if pick < 0.5:
        return orjson.loads(rng.choice(STREAM_SAMPLE))
    return exec_event(rng.randrange(1000), sub=rng.choice(["exec", "portforward", "log"]),
                      verb=rng.choice(["get", "create"]), ns=rng.choice(
                          ["payments", "kube-system", "healert-system"]),
                      user=rng.choice(["alice@example.com", "system:serviceaccount:ns:sa",
                                       "system:node:n1", "system:admin"]))


STREAM_SAMPLE = workload.stream("realistic", 300, match_ratio=0.2, seed=5).items


@st.composite
def hostile_events(draw: st.DrawFn) -> bytes:
    rng = random.Random(draw(st.integers(0, 2**32)))
    event = _base(rng)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(["top", "user", "objectRef", "requestObject",
                                      "annotations", "field"]))
        value = draw(st.one_of(nested, st.sampled_from(NAMES)))
        if where == "field":  # one of the five fields, of any type, or gone
            name = draw(st.sampled_from(FIELDS))
            if draw(st.booleans()):
                event.pop(name, None)
            else:
                event[name] = value
        elif where == "top":
            event[draw(st.sampled_from(KEYS) | texts)] = value
        elif where in ("user", "objectRef") and isinstance(event.get(where), dict):
            event[where][draw(st.sampled_from(KEYS))] = value
        else:
            event[where] = {draw(st.sampled_from(KEYS) | texts): value}
    keys = list(event)
    if draw(st.booleans()):
        rng.shuffle(keys)  # another producer's field order
    ordered = {k: event[k] for k in keys}
    raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=draw(st.booleans()),
                     allow_nan=False).encode()
    return _mangle(draw, raw)


def _mangle(draw: st.DrawFn, raw: bytes) -> bytes:
    """Byte-level changes a dict cannot express: a field twice, an escaped name,
    whitespace, bytes that are not UTF-8, a line cut short."""
    if draw(st.integers(0, 4)) == 0 and raw.endswith(b"}") and len(raw) > 2:
        name = draw(st.sampled_from(FIELDS))
        value = json.dumps(draw(st.one_of(nested, st.sampled_from(NAMES)))).encode()
        raw = raw[:-1] + b',"' + name.encode() + b'":' + value + b"}"
    if draw(st.integers(0, 5)) == 0:
        raw = raw.replace(b'"stage"', b'"st\\u0061ge"').replace(b'"verb"', b'"\\u0076erb"')
    if draw(st.integers(0, 5)) == 0:
        raw = raw.replace(b",", b" ,\n\t").replace(b":", b" : ", 3)
    if draw(st.integers(0, 9)) == 0:
        raw = raw.replace(b"Metadata", b"Meta\xffdata", 1).replace(b'"get"', b'"g\xc0t"', 1)
    if draw(st.integers(0, 9)) == 0:
        raw = raw[:draw(st.integers(1, max(1, len(raw) - 1)))]
    return raw


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), min_size=1, max_size=6))
def test_hostile_but_valid_json_decides_as_rule_out(index: Index, raws: list[bytes]) -> None:
    decide_alike(index, raws)


# -- a native reader slots in ----------------------------------------------------------

def _values(event: Any) -> fieldpass.Values | None:
    """The values a native reader gives (see `fieldpass.Values`), or None: not sure."""
    if not isinstance(event, dict):
        return None
    user, ref = event.get("user"), event.get("objectRef")
    user = {} if user is None else user
    ref = {} if ref is None else ref
    if not isinstance(user, dict) or not isinstance(ref, dict):
        return None
    values = (event.get("stage"), event.get("verb"), ref.get("resource"),
              ref.get("subresource"), ref.get("namespace"), user.get("username"),
              bool(event.get("impersonatedUser")))
    if any(v is not None and not isinstance(v, str) for v in values[:6]):
        return None
    return values


def test_a_native_reader_slots_in_and_answers_alike(index: Index) -> None:
    """A stand-in for the optional compiled reader (another part of the project, absent
    here), made of orjson: its values decide as the pure path does, and what it is not
    sure of is read the pure way."""
    work = workload.stream("realistic", 1200, match_ratio=0.05, seed=3)
    raws = [line.rstrip(b"\n") for line in work.lines()]
    asked: list[int] = []

    def line(raw: bytes) -> fieldpass.Values | None:
        asked.append(len(raw))
        return None if len(asked) % 3 == 0 else _values(orjson.loads(raw))

    head = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
    body = head + b",".join(raws) + b"]}"
    values: list[Any] = []
    spans, at = [], len(head)
    for raw in raws:  # not sure of every fifth item's values: False
        values.append(False if at % 5 == 0 else _values(orjson.loads(raw)))
        spans.append((len(spans), at, at + len(raw)))
        at += len(raw) + 1
    looked_up: list[int] = []

    def whole(text: bytes, by_values: dict[Any, Any], internal_of: dict[str, bool]
              ) -> tuple[list[Any], list[tuple[int, int, int]]] | None:
        # the caches' decisions are taken where they settle an item, as the native
        # reader does; the rest are left to the pure path
        if text is not body:
            return None
        answers: list[Any] = []
        for found in values:
            settled = by_values.get(found[:5], values) if found else values
            if settled is values or isinstance(settled, tuple):
                answers.append(found)
            else:
                looked_up.append(1)
                answers.append(settled)
        return answers, [span for span, answer in zip(spans, answers, strict=True)
                         if not isinstance(answer, str)]

    native = FieldPass(index, line_reader=line, body_reader=whole)
    assert [native.reason(raw) for raw in raws] == [expected(index, raw) for raw in raws]
    assert len(asked) == len(raws)
    sorted_alike(native, index, body, raws)
    sorted_alike(native, index, body, raws)  # now the caches settle most of them
    assert looked_up
    sorted_alike(native, index, body + b" ", raws)  # the reader is not sure: split
