"""Text from outside made safe to print, log and send: printable ASCII, bounded.

Everything the agent shows was written by someone else (user names, object names,
a backend's answers): a newline or an ANSI escape in it could forge log lines or
terminal output. One function does it for every module.
"""

from __future__ import annotations


def clean_text(value: str, limit: int) -> str:
    """Printable ASCII only, at most `limit` characters.

    Control and non-ASCII characters are written as backslash escapes, so a user name
    holding a newline or an ANSI escape cannot forge log lines or terminal output, and
    nothing is silently lost.
    """
    if not (value.isascii() and value.isprintable()):
        value = value[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return value
