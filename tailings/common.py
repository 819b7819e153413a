"""What every `tailings` verb shares: exit codes, the error type, progress output, env setup."""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

# TFX/TFMA 1.16 need Keras-2 SavedModels; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Google client libraries warn about Python 3.10 on import; TFX 1.16 cannot run on newer Python.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
# Library chatter that says nothing to a user of the command line (full logs: `run` log files).
logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)
logging.getLogger("tensorflow").setLevel(logging.ERROR)

from data.errors import EXIT_FAILED, EXIT_OK, TailingsError, os_reason  # noqa: E402,F401


class CliError(TailingsError):
    """A bad flag or input found by the command line itself: one line to stderr, exit 1."""


def say(message: str) -> None:
    """Progress and results go to stderr, so stdout stays clean for piping."""
    print(message, file=sys.stderr, flush=True)


def os_error_line(err: OSError) -> str:
    """One line for an OSError nothing else explained: the path it names and the OS error."""
    inner = next((a for a in err.args if isinstance(a, OSError)), None)
    if not err.filename and inner is not None:
        return os_error_line(inner)
    if err.filename is None:
        return os_reason(err)
    path = f"{err.filename} -> {err.filename2}" if err.filename2 else f"{err.filename}"
    return f"{path}: {os_reason(err)}"


def cannot_write(flag: str, path: Path | str, err: BaseException | str, note: str = "") -> CliError:
    """The one message for an output a verb cannot write: the flag, its path, the OS error."""
    reason = err if isinstance(err, str) else os_reason(err)
    return CliError(f"cannot write {flag} {path}: {reason}" + (f" ({note})" if note else ""))


def check_writable(path: Path | str, flag: str, *, is_file: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: one line naming `flag`, the
    path and the OS error. The folder (`path`, or the folder holding the file `path`) is created
    if missing, and a probe file is written in it and removed, so a read-only folder, a folder
    under a file, or a disk with no space left is found now, not after hours of training. URLs
    (gs://...) are left to whoever writes them."""
    if "://" in str(path):
        return
    path = Path(path)
    if is_file and path.is_dir():
        raise cannot_write(flag, path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    folder = path.parent if is_file else path
    base = folder
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():  # mkdir would say "File exists" about a file that is in the way
        enotdir = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        raise cannot_write(flag, path, enotdir, f"{base} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tailings-write-probe-", dir=folder)
        try:
            os.write(fd, b"\0")  # a full disk may still create an empty file
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise cannot_write(flag, path, err) from None
