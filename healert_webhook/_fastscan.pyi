# The native field scanner's functions (healert_webhook/_fastscan.c; nativescan.py).
from typing import Any

from typing_extensions import Buffer

Fields = tuple[str | None, str | None, str | None, str | None, str | None, str | None, bool]

MAX_DEPTH: int
MAX_ITEMS: int

def scan_line(data: Buffer, /) -> Fields | None: ...
def scan_body(data: Buffer, /) -> list[tuple[int, int, Fields | None]] | None: ...
def decide_body(data: Buffer, by_values: dict[Any, Any], internal_of: dict[str, bool], /
                ) -> tuple[list[Any], list[tuple[int, int, int]]] | None: ...
def decide_lines(data: Buffer, by_values: dict[Any, Any], internal_of: dict[str, bool],
                 longest: int, /) -> tuple[list[Any], list[tuple[int, int, int]]] | None: ...
