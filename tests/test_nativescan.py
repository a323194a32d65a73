"""The native field scanner answers as orjson reads the same bytes, or not at all.

Its contract (healert_webhook/nativescan.py): an answer equals orjson's reading
normalised to `Fields`; None ("not sure") is always allowed, and is the only answer for
bytes orjson refuses. Checked over every real fixture, the three benchmark streams as
lines and bodies, hypothesis-made hostile events (valid JSON written oddly, and bytes
mutated at random), and targeted cases. The scanner's tests skip when the extension
is not built; the loader's run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fieldpass import fixture_lines
from test_fieldpass import hostile_events as valid_hostile_events

from healert_webhook import fieldpass, nativescan
from healert_webhook.audit import BadDocument, batch_items
from healert_webhook.config import Settings
from healert_webhook.fieldpass import FieldPass, Unreadable
from healert_webhook.pipeline import make_detector
from healert_webhook.rules import load_rules

from support import workload
from support.events import event_list, exec_event, noise_event
from support.paths import ROOT

REFUSED = "refused"  # orjson refuses the bytes, or they hold no object
UNSURE = "unsure"  # orjson reads them, but into values the scanner does not answer with


@pytest.fixture(scope="module")
def scanner() -> ModuleType:
    """The compiled module; the test skips when it was not built."""
    if nativescan.native is None:
        if os.environ.get("HEALERT_REQUIRE_NATIVE"):  # CI, where gcc is: never skip
            pytest.fail(f"HEALERT_REQUIRE_NATIVE is set: {nativescan.STATUS}")
        pytest.skip(nativescan.STATUS)  # how to build it, or the switch that is off
    return nativescan.native


def normalised(event: Any) -> Any:
    """orjson's reading of an event as `Fields`, or UNSURE."""
    if not isinstance(event, dict):
        return UNSURE
    user, ref = event.get("user"), event.get("objectRef")
    if user is not None and not isinstance(user, dict):
        return UNSURE
    if ref is not None and not isinstance(ref, dict):
        return UNSURE
    impersonated = event.get("impersonatedUser")
    if isinstance(impersonated, int | float) and not isinstance(impersonated, bool):
        return UNSURE
    values = (event.get("stage"), event.get("verb"), (ref or {}).get("resource"),
              (ref or {}).get("subresource"), (ref or {}).get("namespace"),
              (user or {}).get("username"))
    if not all(value is None or isinstance(value, str) for value in values):
        return UNSURE
    return (*values, bool(impersonated))


def reference(raw: bytes) -> Any:
    """What scan_line may answer besides None: `Fields`, or REFUSED / UNSURE (None only)."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return REFUSED
    return normalised(event) if isinstance(event, dict) else REFUSED


def line_alike(scanner: ModuleType, raw: bytes) -> bool:
    """scan_line's answer on `raw` is orjson's, or None; True when it answered."""
    got = scanner.scan_line(raw)
    if b"\n" not in raw:  # decide_lines reads a line as scan_line does
        answers, spans = scanner.decide_lines(raw + b"\n", {}, {}, len(raw))
        assert answers == [False if got is None else got]
        assert spans == [(0, 0, len(raw))]
        assert scanner.decide_lines(raw + b"\n", {}, {}, len(raw) - 1)[0] == [False]
    if got is None:
        return False
    assert got == reference(raw), raw[:300]
    assert all(value is None or type(value) is str for value in got[:6])
    assert type(got[6]) is bool
    return True


def body_alike(scanner: ModuleType, raw: bytes) -> bool:
    """scan_body's answer on `raw` is batch_items' on orjson's reading, or None; True
    when it answered."""
    got = scanner.scan_body(raw)
    if got is None:
        return False
    doc = orjson.loads(raw)  # it answered: orjson reads the body
    items = batch_items(doc)  # and it is a batch (BadDocument is never answered)
    assert len(got) == len(items), raw[:300]
    for (start, end, fields), item in zip(got, items, strict=True):
        assert orjson.loads(raw[start:end]) == item
        assert raw[start:end] == raw[start:end].strip() or (start, end) == (0, len(raw))
        if fields is not None:
            assert fields == normalised(item), raw[start:end][:300]
    if isinstance(doc, dict) and len(items) == 1 and items[0] is doc:
        assert got[0][:2] == (0, len(raw))  # one Event: the whole body, as split gives
    # decide_body scans alike; with empty caches every item is left open, with its fields
    answers, spans = scanner.decide_body(raw, {}, {})
    assert answers == [False if fields is None else fields for _, _, fields in got]
    assert spans == [(index, start, end) for index, (start, end, _) in enumerate(got)]
    return True


def events_alike(scanner: ModuleType, raws: list[bytes]) -> None:
    """Each raw event as a line and as a body, and those that are JSON as an EventList."""
    for raw in raws:
        line_alike(scanner, raw)
        body_alike(scanner, raw)
    whole = [raw for raw in raws if reference(raw) != REFUSED]
    if whole:
        body = event_list(whole)
        body_alike(scanner, body)
        body_alike(scanner, b"[" + b",".join(whole) + b"]")


# -- the loader, built or not ----------------------------------------------------------

def _loader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healert_webhook.nativescan", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env}, cwd=ROOT)


def test_the_switch_turns_it_off_and_says_so() -> None:
    off = _loader("--require", env={"HEALERT_NATIVE": "off"})
    assert off.returncode == 1
    assert off.stdout.strip() == "native field scanner: off (HEALERT_NATIVE=off)"
    assert _loader(env={"HEALERT_NATIVE": "off"}).returncode == 0  # only told
    code = "from healert_webhook import nativescan; print(nativescan.native)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True, env={**os.environ, "HEALERT_NATIVE": "off"})
    assert shown.stdout.strip() == "None"


def test_it_says_whether_it_is_in_use() -> None:
    on = _loader("--require", env={"HEALERT_NATIVE": ""})
    if importlib.util.find_spec("healert_webhook._fastscan") is None:  # whatever the switch
        assert on.returncode == 1 and "not built" in on.stdout
    else:
        assert on.returncode == 0 and on.stdout.startswith("native field scanner: in use")


# -- equivalence -----------------------------------------------------------------------

def every_fixture(shared: Path) -> list[bytes]:
    """The events of the shared fixtures and of every folder of tests/fixtures."""
    lines = fixture_lines(shared)
    for folder in sorted((ROOT / "tests" / "fixtures").iterdir()):
        if folder.is_dir() and folder.name != "apiserver-1.37":  # fixture_lines reads it
            lines += fixture_lines(folder)
    return lines


def test_every_fixture_is_read_as_orjson_reads_it(scanner: ModuleType,
                                                  fixtures_dir: Path) -> None:
    lines = every_fixture(fixtures_dir)
    assert len(lines) > 500
    events_alike(scanner, lines)
    readable = [line for line in lines if reference(line) not in (REFUSED, UNSURE)]
    answered = sum(scanner.scan_line(line) is not None for line in readable)
    assert answered >= 0.95 * len(readable), (answered, len(readable))


@pytest.mark.parametrize("name", workload.STREAMS)
def test_the_benchmark_streams_are_read_and_answered_whole(scanner: ModuleType,
                                                           name: str) -> None:
    work = workload.stream(name, 3000, match_ratio=0.05, seed=11)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    assert all(line_alike(scanner, line) for line in lines)
    for body in work.batches(400):
        assert body_alike(scanner, body)
        assert all(fields is not None for _, _, fields in scanner.scan_body(body))


def test_its_fields_decide_as_the_pure_field_pass(scanner: ModuleType, tmp_path: Path) -> None:
    """Plugged in as nativescan.py says, FieldPass._decide gives FieldPass.reason's answer."""
    text = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    (tmp_path / "all.yaml").write_text(text)
    index = make_detector(load_rules(tmp_path / "all.yaml"),
                          Settings(k8s_namespace="healert-system")).index
    fp = FieldPass(index)
    work = workload.stream("realistic", 2000, match_ratio=0.2, seed=3)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    odd = [orjson.dumps(exec_event(1, user=user)) for user in ("system:node:n", "alice")]
    reasons = set()
    for raw in lines + odd:
        stage, verb, resource, subresource, namespace, username, impersonated = \
            scanner.scan_line(raw)
        fields = fieldpass._Fields(stage, verb, fieldpass._User(username), impersonated,
                                   fieldpass._Ref(resource, subresource, namespace))
        reasons.add(fp.reason(raw))
        assert fp._decide(fields) == fp.reason(raw), raw[:300]
    assert reasons >= {None, "no_rule", "system_actor"}


def test_bodies_split_as_the_pure_field_pass_splits_them(scanner: ModuleType) -> None:
    """The same items' bytes as FieldPass.split, for every shape of batch."""
    events = [noise_event(5), exec_event(6)]
    raws = [orjson.dumps(event) for event in events]
    bodies = [event_list(events), b"[" + b",".join(raws) + b"]",
              b' {"items":[' + b", ".join(raws) + b"]} \n", raws[1],
              b'{"kind":"EventList","items":null}', b'{"kind":"EventList"}',
              b'{"auditID":"x","items":[1]}', b"[]", b'[1, "x", {}]']
    fp = FieldPass(make_detector(load_rules(ROOT / "rules.yaml"), Settings()).index)
    for body in bodies:
        got = scanner.scan_body(body)
        assert got is not None, body
        assert [body[start:end] for start, end, _ in got] == \
            [bytes(item) for item in fp.split(body)]
        assert body_alike(scanner, body)
    assert scanner.scan_body(b'{"auditID":"x","items":[1]}')[0][2] == \
        (None, None, None, None, None, None, False)
    assert [fields for _, _, fields in scanner.scan_body(b'[1, "x", {}]')] == \
        [None, None, (None, None, None, None, None, None, False)]
    for refused in (b'{"kind":"EventList","items":{"a":1}}', b"5", b"", b"{",
                    b'{"items":[1,]}', b'[{"a":1e}]'):
        assert scanner.scan_body(refused) is None, refused
        with pytest.raises((BadDocument, Unreadable)):
            fp.split(refused)


def test_decisions_are_taken_from_the_caches_as_fieldpass_takes_them(
        scanner: ModuleType) -> None:
    """decide_body answers an item from the caches exactly where `_decide_values` would:
    a settled reason or None, or the pair chosen by the user; else it leaves it open."""
    def event(verb: str, user: Any, impersonated: Any = None) -> dict[str, Any]:
        found = noise_event(1)
        found["verb"] = verb
        found["user"] = user
        found["impersonatedUser"] = impersonated
        return found

    lease = noise_event(1)["objectRef"]
    key = ("ResponseComplete", "update", lease["resource"], None, lease["namespace"])
    body = event_list([
        event("update", {"username": "system:node:n1"}),
        event("update", {"username": "alice"}),
        event("update", {"username": "system:node:n1"}, {"username": "bob"}),
        event("update", {"username": "carol"}),  # not in the names' cache
        event("update", {}),  # no name: as an internal actor (a failed authentication)
        event("get", {"username": "alice"}),  # not in the decisions' cache
        event("update", {"username": 5}),  # not sure of its fields
    ])
    assert scanner.scan_body(body)[0][2][:5] == key
    internal_of = {"system:node:n1": True, "alice": False}
    answers, spans = scanner.decide_body(body, {key: ("system_actor", None)}, internal_of)
    fields = [found for _, _, found in scanner.scan_body(body)]
    assert answers == ["system_actor", None, None, fields[3], "system_actor", fields[5],
                       False]
    bounds = scanner.scan_body(body)
    assert spans == [(i, *bounds[i][:2]) for i in (1, 2, 3, 5, 6)]
    answers, spans = scanner.decide_body(body, {key: "no_rule"}, {})
    assert answers[:5] == ["no_rule"] * 5
    assert [i for i, _, _ in spans] == [5, 6]
    assert scanner.decide_body(body, {key: ("a", "b", "c")}, internal_of)[0][0] == fields[0]
    assert scanner.decide_body(b'{"items":[1,]}', {}, {}) is None
    with pytest.raises(TypeError):
        scanner.decide_body(body, [], {})


# -- targeted cases ----------------------------------------------------------------------

LEASE = orjson.dumps(noise_event(1))


def _answers(scanner: ModuleType, raw: bytes) -> bool:
    """Whether it answers with the fields of the event `raw` (as orjson reads them), as a
    line and as a body that is one Event."""
    line, body = line_alike(scanner, raw), body_alike(scanner, raw)
    if body:
        assert scanner.scan_body(raw)[0][2] == scanner.scan_line(raw)
    return line


def _refused(scanner: ModuleType, raw: bytes) -> bool:
    """Whether neither function answers at all."""
    return scanner.scan_line(raw) is None and scanner.scan_body(raw) is None


def test_the_lease_itself_is_answered(scanner: ModuleType) -> None:
    assert scanner.scan_line(LEASE) == normalised(noise_event(1))
    assert scanner.scan_line(b" \t\r\n" + LEASE + b"\n \r\t") == normalised(noise_event(1))


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                                 b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
                                 b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"])
def test_bad_utf8_anywhere_is_refused(scanner: ModuleType, bad: bytes) -> None:
    for raw in (LEASE.replace(b'"Metadata"', b'"Meta' + bad + b'data"'),  # a skipped string
                LEASE.replace(b'"level"', b'"lev' + bad + b'el"'),  # a skipped key
                LEASE.replace(b'"update"', b'"upd' + bad + b'"'),  # a deciding value
                LEASE[:-1] + b',"x":"' + bad + b'"}',  # at a string's end
                LEASE[:-1] + b',"x":["a' + bad,  # cut short inside
                LEASE[:-1] + bad + b"}"):  # outside strings
        assert reference(raw) == REFUSED
        assert scanner.scan_line(raw) is None and scanner.scan_body(raw) is None
        assert scanner.scan_body(event_list([raw, LEASE])) is None


def test_valid_utf8_of_every_length_is_read(scanner: ModuleType) -> None:
    for text in ("é", "☃", "\U0001f600", "\u07ff", "\uffff", "\U0010ffff", "\ue000"):
        raw = LEASE.replace(b'"Metadata"', json.dumps(text, ensure_ascii=False).encode())
        assert line_alike(scanner, raw)
        named = LEASE.replace(b'"kube-node-lease"', json.dumps("ns" + text,
                                                                ensure_ascii=False).encode())
        assert line_alike(scanner, named)
        assert scanner.scan_line(named)[4] == "ns" + text


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udc00", b"\\udbff\\u0041", b"\\ud800\\n",
                                    b"\\ud800\\udbff", b"\\u12", b"\\u12g4", b"\\x41", b"\\U0041",
                                    b"\\'", b"\\", b"\\a"])
def test_bad_escapes_are_refused(scanner: ModuleType, escape: bytes) -> None:
    raw = LEASE.replace(b'"Metadata"', b'"' + escape + b'"')
    assert reference(raw) == REFUSED
    assert _refused(scanner, raw)


def test_good_escapes_are_read(scanner: ModuleType) -> None:
    for escape in (b"\\ud83d\\ude00", b"\\u00e9", b"\\u0000", b'\\"', b"\\\\", b"\\/",
                   b"\\b\\f\\n\\r\\t", b"\\uD83D\\uDE00", b"\\uffff"):
        raw = LEASE.replace(b'"Metadata"', b'"' + escape + b'"')
        assert reference(raw) not in (REFUSED, UNSURE)
        assert line_alike(scanner, raw) and body_alike(scanner, raw)


def test_escapes_where_it_decides_make_it_unsure(scanner: ModuleType) -> None:
    for raw in (LEASE.replace(b'"verb"', b'"\\u0076erb"'),  # a deciding key
                LEASE.replace(b'"update"', b'"upd\\u0061te"'),  # a deciding value
                LEASE.replace(b'"username"', b'"user\\u006eame"'),
                LEASE.replace(b'"namespace"', b'"n\\u0061mespace"')):
        assert reference(raw) not in (REFUSED, UNSURE)
        assert scanner.scan_line(raw) is None
        assert scanner.scan_body(event_list([raw]))[0][2] is None
        alone = scanner.scan_body(raw)  # one Event: a key of its own may be the batch's
        assert alone is None if b'"\\u0076erb"' in raw else alone == [(0, len(raw), None)]
    body = event_list([LEASE]).replace(b'"items"', b'"it\\u0065ms"')
    assert scanner.scan_body(body) is None  # the batch's own keys
    kind = b'{"kind":"\\u0045ventList","auditID":"a","items":null}'
    assert batch_items(orjson.loads(kind)) == []  # an EventList, spelled with an escape
    assert scanner.scan_body(kind) is None


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.8e308", b"1e308", b"1" * 400,
                                    b"0.0000001e99999999999", b"1e-99999999999"])
def test_numbers_that_could_overflow_are_not_answered(scanner: ModuleType,
                                                      number: bytes) -> None:
    raw = LEASE[:-1] + b',"requestObject":{"spec":{"replicas":' + number + b"}}}"
    assert _refused(scanner, raw)


@pytest.mark.parametrize("number", [b"0", b"-0", b"1.5", b"-12e-3", b"1E+5", b"1e299",
                                    b"1e-300", b"18446744073709551616", b"9" * 290,
                                    b"0.000000000000000000000000000001"])
def test_numbers_orjson_reads_are_read(scanner: ModuleType, number: bytes) -> None:
    raw = LEASE[:-1] + b',"requestObject":{"spec":{"replicas":' + number + b"}}}"
    assert reference(raw) not in (REFUSED, UNSURE)
    assert line_alike(scanner, raw) and body_alike(scanner, raw)


@pytest.mark.parametrize("number", [b"01", b"-", b"1.", b".5", b"1e", b"1e+", b"+1", b"0x1",
                                    b"NaN", b"Infinity", b"-Infinity", b"1.e5", b"--1"])
def test_numbers_outside_the_grammar_are_refused(scanner: ModuleType, number: bytes) -> None:
    raw = LEASE[:-1] + b',"x":' + number + b"}"
    assert reference(raw) == REFUSED
    assert _refused(scanner, raw)


def test_nesting_is_bounded_below_orjsons_limit(scanner: ModuleType) -> None:
    limit = scanner.MAX_DEPTH
    assert limit < 1024
    for depth, answered in ((limit - 1, True), (limit + 5, False), (1010, False),
                            (5000, False)):
        for open_, close in ((b"[", b"]"), (b'{"a":', b"}")):
            raw = LEASE[:-1] + b',"x":' + open_ * depth + b"1" + close * depth + b"}"
            assert scanner.scan_line(raw) is not None if answered else \
                scanner.scan_line(raw) is None
            assert (scanner.scan_body(raw) is not None) == answered
    flat = b"[" * 100_000 + b"]" * 100_000  # no recursion past the bound
    assert scanner.scan_body(flat) is None and scanner.scan_line(flat) is None


def test_a_key_written_twice_is_read_last(scanner: ModuleType) -> None:
    base = LEASE[:-1]
    cases = [
        base + b',"stage":"RequestReceived"}',
        base + b',"verb":null}',
        base + b',"user":{"username":"alice"}}',
        base + b',"user":null}',
        base + b',"user":"bob"}',
        base + b',"objectRef":{"resource":"pods","subresource":"exec"}}',
        base + b',"impersonatedUser":{"username":"x"}}',
        base + b',"impersonatedUser":{"username":"x"},"impersonatedUser":null}',
        base.replace(b'"username":', b'"username":"a","username":') + b"}",
        base.replace(b'"namespace":', b'"namespace":null,"namespace":') + b"}",
    ]
    for raw in cases:
        assert _answers(scanner, raw) == (reference(raw) != UNSURE)
    twice = event_list([LEASE]).replace(b'"items":[', b'"items":[1,2],"items":[')
    assert body_alike(scanner, twice) and len(scanner.scan_body(twice)) == 1
    gone = event_list([LEASE])[:-1] + b',"items":null}'
    assert scanner.scan_body(gone) == []


@pytest.mark.parametrize("value", [b"5", b"true", b"[]", b'["x"]', b"{}", b'{"a":1}',
                                   b'""', b'"x"', b"null", b"0.0", b"false"])
def test_each_type_of_every_field(scanner: ModuleType, value: bytes) -> None:
    for field in (b"stage", b"verb", b"user", b"impersonatedUser", b"objectRef"):
        raw = LEASE[:-1] + b',"' + field + b'":' + value + b"}"
        assert _answers(scanner, raw) == (reference(raw) != UNSURE)
    for field in (b"username", b"resource", b"subresource", b"namespace"):
        where = b'"user":{' if field == b"username" else b'"objectRef":{'
        raw = LEASE.replace(where, where + b'"' + field + b'":' + value + b",", 1)
        raw = raw.replace(b'"' + field + b'":"', b'"old' + field + b'":"')
        assert _answers(scanner, raw) == (reference(raw) != UNSURE), raw


@pytest.mark.parametrize("junk", [b"\xef\xbb\xbf", b"\x00", b"x", b"{}", b",", b"]", b"\x0c",
                                  b"\xa0", b"/* */"])
def test_anything_before_or_after_the_value_is_refused(scanner: ModuleType,
                                                       junk: bytes) -> None:
    for raw in (junk + LEASE, LEASE + junk, LEASE + b"\n" + junk):
        assert reference(raw) == REFUSED
        assert _refused(scanner, raw)


@pytest.mark.parametrize("control", [bytes([c]) for c in (0, 1, 9, 10, 13, 31)])
def test_control_characters_in_strings_are_refused(scanner: ModuleType,
                                                   control: bytes) -> None:
    for raw in (LEASE.replace(b"Metadata", b"Meta" + control + b"data"),
                LEASE.replace(b'"level"', b'"lev' + control + b'el"'),
                LEASE.replace(b"kube-node-lease", control + b"kube-node-lease")):
        assert reference(raw) == REFUSED
        assert _refused(scanner, raw)
    assert line_alike(scanner, LEASE.replace(b"Metadata", b"Meta\x7fdata"))


def test_the_grammar_is_strict(scanner: ModuleType) -> None:
    for bad in (b'{"a":1,}', b'{"a" 1}', b'{"a":1 "b":2}', b"{'a':1}", b'{"a":[1,]}',
                b'{"a":[,1]}', b'{"a":tru}', b'{"a":nul}', b'{"a":True}', b'{a:1}',
                b'{"a":1}}', b'{"a":[1]]}', b'{"a":"x}', b'{"a":"x\\"}', b'{"a"}',
                b'{"a":}', b'{,"a":1}', b'{"a":1,,"b":2}', b"{\"a\":\x0b1}",
                b'{"a":[1 2]}'):
        assert reference(bad) == REFUSED, bad
        assert _refused(scanner, bad), bad


def test_items_past_the_bound_are_left_to_the_pure_path(scanner: ModuleType) -> None:
    limit = scanner.MAX_ITEMS
    within = b"[" + b",".join([b"{}"] * limit) + b"]"
    assert len(scanner.scan_body(within)) == limit
    assert scanner.scan_body(b"[" + b",".join([b"{}"] * (limit + 1)) + b"]") is None


def test_any_bytes_like_object_is_read(scanner: ModuleType) -> None:
    fields = scanner.scan_line(LEASE)
    assert scanner.scan_line(memoryview(LEASE)) == scanner.scan_line(bytearray(LEASE)) == fields
    body = event_list([LEASE] * 400)  # past the size read without the GIL
    assert len(body) > 65536
    assert [f for _, _, f in scanner.scan_body(body)] == [fields] * 400
    assert [f for _, _, f in scanner.scan_body(bytearray(body))] == [fields] * 400
    with pytest.raises(TypeError):
        scanner.scan_line("text")


# -- hostile input -----------------------------------------------------------------------

INTERESTING = [b'"', b"\\", b"\x00", b"\x1f", b"\xff", b"\xc0", b"\xed", b"\xf4", b"\x80",
               b"{", b"}", b"[", b"]", b",", b":", b" ", b"e", b"E", b"-", b"+", b"0", b".",
               b"u", b"n", b"t", b"\\u", b"\\ud800", b"\\udc00", b"1e400", b"\xef\xbb\xbf"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event with a few bytes replaced, inserted or dropped."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    raw = bytearray(rng.choice(SAMPLE))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        what = draw(st.sampled_from(["replace", "insert", "drop"]))
        piece = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=3))
        if what == "drop":
            del raw[at:at + draw(st.integers(1, 4))]
        elif what == "insert":
            raw[at:at] = piece
        else:
            raw[at:at + len(piece)] = piece
    return bytes(raw)


NAMES_AND_KEYS = ["stage", "verb", "user", "username", "impersonatedUser", "objectRef",
                  "resource", "subresource", "namespace", "items", "kind", "auditID",
                  "EventList", "ResponseComplete", "get", "pods", "exec", "system:node:n", "",
                  "\u00e9", "\U0001f600", "\x00", "\\", '"']
SAMPLE = [*(orjson.dumps(event) for event in (noise_event(2), exec_event(3))),
          *workload.stream("small", 40, match_ratio=0.2, seed=2).items]


@settings(max_examples=int(os.environ.get("HEALERT_FUZZ_EXAMPLES", "400")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_hostile_events(), min_size=1, max_size=6))
def test_hostile_but_valid_json_is_read_as_orjson_reads_it(scanner: ModuleType,
                                                          raws: list[bytes]) -> None:
    events_alike(scanner, raws)


@settings(max_examples=int(os.environ.get("HEALERT_FUZZ_EXAMPLES", "1500")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=3))
def test_mutated_bytes_are_never_answered_unlike_orjson(scanner: ModuleType,
                                                       raws: list[bytes]) -> None:
    events_alike(scanner, raws)
    for raw in raws:
        body = b'{"kind":"EventList","items":[' + raw + b"," + LEASE + b"]}"
        body_alike(scanner, body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(NAMES_AND_KEYS),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(NAMES_AND_KEYS) | st.text(max_size=4), inner, max_size=4),
    max_leaves=20)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Any JSON document, often shaped like a batch, written with odd whitespace and
    escapes."""
    value = draw(json_values)
    shape = draw(st.integers(0, 3))
    if shape == 1:
        value = {"kind": draw(st.sampled_from(["EventList", "Event", None, 1])), "items": value}
    elif shape == 2 and isinstance(value, dict):
        value["auditID"] = "x"
    raw = json.dumps(value, ensure_ascii=draw(st.booleans()),
                     indent=draw(st.sampled_from([None, 0, 2]))).encode()
    if draw(st.booleans()):
        raw = raw.replace(b",", draw(st.sampled_from([b" ,", b",\t", b"\r\n,"])))
    if draw(st.integers(0, 4)) == 0:  # a lone or reversed surrogate, valid JSON to none
        raw = raw.replace(b'"get"', draw(st.sampled_from([b'"\\ud800"', b'"\\ude00\\ud83d"'])))
    return raw


@settings(max_examples=int(os.environ.get("HEALERT_FUZZ_EXAMPLES", "500")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_json_document_is_read_as_orjson_reads_it(scanner: ModuleType, raw: bytes) -> None:
    line_alike(scanner, raw)
    body_alike(scanner, raw)
