"""The optional native field scanner: the deciding fields of events read by a compiled,
strict JSON validator, where it was built (healert_webhook/_fastscan.c).

`native` is the compiled module, or None when it was not built (no C compiler at install
time) or `HEALERT_NATIVE=off` is in the environment (config.py); then the pure field pass
(fieldpass.py) does all the work, as it does whenever the scanner is not sure.

The contract, for `data` any bytes:

- `native.scan_line(data)` -> `Fields` or None. `Fields` is the tuple (stage, verb,
  resource, subresource, namespace, username, impersonated): each a str, or None when
  the field is absent or null (`resource`, `subresource` and `namespace` of
  `objectRef`, `username` of `user`; an absent or null `objectRef` or `user` gives None
  for its fields), and `impersonated` the truth (`bool`) of `impersonatedUser`'s value.
  `fields[:5]` is what fieldpass caches a decision by.
- `native.scan_body(data)` -> the items of a webhook body as `audit.batch_items` reads
  it (an EventList, a JSON array of events, or one Event), as a list of (start, end,
  fields): `data[start:end]` is the item's JSON (for one Event, the whole body) and
  `fields` its `Fields`, or None when not sure of that item; or None when not sure of
  the body.
- `native.decide_body(data, by_values, internal_of)` -> `scan_body`'s items answered
  from fieldpass's two caches, so that an event whose combination is settled costs no
  Python code at all: `(answers, spans)`, one answer an item, in order: the cached
  decision for `fields[:5]` in `by_values` (a skip reason, or None: a candidate), the
  user choosing between a pair by `internal_of[username]` as fieldpass does; the item's
  `Fields` when a cache does not hold what that needs; False when `scan_body` would give
  None for the item. `spans` holds (index, start, end) for every item whose answer is
  not a reason. None when `scan_body` would give None.
- `native.decide_lines(data, by_values, internal_of, longest)` -> the same `(answers,
  spans)` for the log lines of `data` (each ended by a newline; what follows the last
  newline is no line), each line read as `scan_line` reads it, and False for a line
  longer than `longest` bytes; None past `MAX_ITEMS` lines. The tail's block of lines
  is sorted in one call, no line split out of it unless it must be parsed.

Exactness: when the scanner answers, the answer is what orjson's reading of the same
bytes gives (hence fieldpass's): it validates the whole input as orjson does (RFC 8259
grammar, strict UTF-8, escapes with paired surrogates, no control characters, no byte
order mark, nothing after the value). None means "not sure: use the pure path", and is
the answer for everything orjson refuses and for what the scanner does not read
exactly: a number whose conversion could overflow a double, nesting deeper than
`MAX_DEPTH`, more than `MAX_ITEMS` items; per event, a deciding value that is not a
plain string or null or holds escapes, a `user` or `objectRef` that is not an object
or null, a key written with escapes where the deciding keys are, an item that is not an
object, and an `impersonatedUser` that is a number. A key written twice is read as
orjson reads it, the last one.

Plugging it into fieldpass: for a `Fields` answer, `_Fields(stage, verb,
_User(username), impersonated, _Ref(resource, subresource, namespace))` is decided by
`FieldPass._decide` as the event itself (tests/test_nativescan.py checks it); building
those Structs costs more than the scan, so a decision cached by `fields[:5]`, the user
choosing between the two answers as `_decide` does, is the cheap way in.

`python -m healert_webhook.nativescan` says whether it is in use (`--require`: exit 1 if
not).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from healert_webhook.config import OPTIONS_BY_NAME

Fields = tuple[str | None, str | None, str | None, str | None, str | None, str | None, bool]
Bound = tuple[int, int, Fields | None]
FIELD_NAMES = ("stage", "verb", "resource", "subresource", "namespace", "username",
               "impersonated")
_SWITCH = OPTIONS_BY_NAME["native_scanner"]


def _load() -> tuple[ModuleType | None, str]:
    """The compiled module, or None, and a sentence saying which and why."""
    name = _SWITCH.env[0]
    try:
        switch = _SWITCH.parse(os.environ.get(name) or _SWITCH.default)  # empty: unset
    except ValueError as exc:  # the command's settings refuse it too, naming it
        return None, f"native field scanner: off ({name}: {exc})"
    if switch == "off":
        return None, f"native field scanner: off ({name}=off)"
    try:
        from healert_webhook import _fastscan
    except ImportError:
        return None, ("native field scanner: not built (install with a C compiler "
                      "present: pip install -e .)")
    return _fastscan, f"native field scanner: in use ({_fastscan.__file__})"


native, STATUS = _load()


def main(argv: list[str] | None = None) -> int:
    """Print whether the scanner is in use; with `--require`, exit 1 when it is not."""
    args = sys.argv[1:] if argv is None else argv
    print(STATUS)
    return 1 if native is None and "--require" in args else 0


if __name__ == "__main__":
    sys.exit(main())
