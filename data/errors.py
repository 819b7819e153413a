"""The one error type every part of tailings raises for a user to read.

A `TailingsError` says what went wrong in one line, naming the file or flag; `tailings.cli.main`
catches it once, prints `tailings <verb>: error: <message>` to stderr and exits with the error's
`exit_code`. It lives at the bottom of the stack (data -> components -> pipeline -> serving ->
tailings) so every layer can raise it without importing the command line.
"""

from __future__ import annotations

# Exit codes every verb shares (the README's exit code table lists them all).
EXIT_OK = 0
EXIT_FAILED = 1  # bad input, or the job produced nothing
EXIT_USAGE = 2  # argparse: unknown flag, missing argument
EXIT_ANOMALIES = 4  # data anomalies: `tailings run` stopped, `stats --compare` found drift
EXIT_BUSY = 5  # another run or conversion holds the output folder's lock
EXIT_SOME_FAILED = 6  # `tailings predict --out-dir`: some scenes failed, the others were written


class TailingsError(Exception):
    """A failure a user can act on: one line on stderr, exit code `exit_code`."""

    exit_code = EXIT_FAILED


def os_reason(err: BaseException) -> str:
    """The OS's own words for a failed read or write ("No space left on device"), whoever
    wrapped the OSError: its strerror, Beam's `IOError(err)` and `BeamIOError` maps, TensorFlow's
    "path; reason" text. Anything else: the first line of its message."""
    if isinstance(err, OSError):
        if err.strerror:
            return err.strerror
        details = getattr(err, "exception_details", None) or {}
        inner = [e for e in (*err.args, *details.values()) if isinstance(e, BaseException)]
        if inner:
            return os_reason(inner[0])
    text = (getattr(err, "message", None) or str(err)).strip()
    return text.splitlines()[0].rsplit("; ", 1)[-1] if text else type(err).__name__
