"""Exit codes of every `healert-webhook` command, in one table.

Scripts and Kubernetes rely on these: 2 always means "fix the configuration" (flags,
environment, rules file, certificates), never a transient failure.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # the command ran and failed: a part died, a file was unreadable, a check failed
CONFIG = 2  # unusable flags, settings, rules file or certificates; nothing was started
UNREACHABLE = 3  # check-backend: the backend is unreachable or unhealthy
KEY_REFUSED = 4  # check-backend: the backend refused the API key
EVENT_REFUSED = 5  # check-backend --send-test: the backend refused the test event
PIPE_CLOSED = 141  # what a shell reports for a process ended by SIGPIPE, as `| head` does

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (FAILED, "the command failed (a part died, a file could not be read, a check failed)"),
    (CONFIG, "configuration error: bad flags, settings, rules file or certificates"),
    (UNREACHABLE, "check-backend: the backend is unreachable or unhealthy"),
    (KEY_REFUSED, "check-backend: the backend refused the API key"),
    (EVENT_REFUSED, "check-backend --send-test: the backend refused the test event"),
    (PIPE_CLOSED, "the reader of the output went away (`| head`): stopped quietly"),
)
