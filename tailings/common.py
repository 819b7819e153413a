"""What every `tailings` verb shares: exit codes, the error type, progress output, env setup."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import select
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

# TFX/TFMA 1.16 need Keras-2 SavedModels; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ log: 2 drops INFO and WARNING (cpu_feature_guard, "TF-TRT Warning: Could not
# find TensorRT"), keeps ERROR. Read once, when TensorFlow's C++ library loads. Whether the user
# chose a level decides whether `verb_noise_filtered` filters these lines (see there).
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Everything about the noise of the processes a verb starts (Beam's workers: `convert` and
# `predict --beam` with --workers > 1 run them as processes) lives in this module: the warnings
# below, and the lines `verb_noise_filtered` keeps from stderr.
#
# Python warnings that say nothing to a user of the command line: Google's client libraries warn
# about Python 3.10 on import (TFX 1.16 cannot run on newer Python), and tensorflow_hub, which
# Beam's TensorFlow model handler imports (`predict --beam`), that pkg_resources is deprecated.
HUB_WARNING = "pkg_resources is deprecated as an API"
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
warnings.filterwarnings("ignore", message=HUB_WARNING, category=UserWarning)
# The same in the processes a verb starts, which inherit the environment, not the filters above
# (only the two Google modules that warn on every import: PYTHONWARNINGS takes module names, not
# patterns). A user's own PYTHONWARNINGS is left as it is.
WORKER_WARNINGS = (
    "ignore::FutureWarning:google.api_core._python_version_support",
    "ignore::FutureWarning:google.auth.transport.grpc",
    f"ignore:{HUB_WARNING}:UserWarning",
)
os.environ.setdefault("PYTHONWARNINGS", ",".join(WORKER_WARNINGS))
# Library chatter that says nothing to a user of the command line (full logs: `run` log files).
logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)
logging.getLogger("tensorflow").setLevel(logging.ERROR)

from data.errors import EXIT_FAILED, EXIT_OK, TailingsError, os_reason  # noqa: E402,F401

# What TensorFlow's C++ library prints at ERROR level while it loads on a machine without a GPU:
# XLA's CUDA plugins registering twice ("Unable to register cuFFT factory: Attempting to register
# factory for plugin cuFFT when one has already been registered", likewise cuDNN and cuBLAS).
# Harmless, and only TF_CPP_MIN_LOG_LEVEL=3 hides them, which would hide every real C++ error
# too. The INFO and WARNING lines are here as well, for a user who set a lower level.
TF_STARTUP_NOISE = re.compile(
    rb"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for plugin"
    rb"|cpu_feature_guard\.cc:\d+\]"
    rb"|TF-TRT Warning: Could not find TensorRT"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)

# What Beam's worker processes print as they start, besides TensorFlow's start-up lines: the
# FutureWarnings of Google modules that WORKER_WARNINGS cannot name (grpcio versions, ...), with
# the source line Python echoes after each, and Beam's own two WARNING lines about the options
# the DirectRunner hands its workers ("Discarding unparseable args", "No
# semi_persistent_directory found"). Errors and every other line still show.
BEAM_WORKER_NOISE = re.compile(
    rb"/google/[\w/]+\.py:\d+: FutureWarning: "
    rb"|^\s+warnings\.warn\((message, FutureWarning\))?$"
    rb"|No semi_persistent_directory found"
    rb"|Discarding unparseable args"
)


@contextlib.contextmanager
def stderr_filtered(noise: re.Pattern[bytes]) -> Iterator[None]:
    """While the block runs, whatever reaches file descriptor 2 (Python, C++ libraries, child
    processes such as Beam's workers) goes through a pipe, and a thread passes it on to the
    real stderr as it comes, without the lines `noise` matches. A line without its newline yet
    (a prompt) is passed on after 0.1 s. When the block ends, fd 2 is stderr again and what was
    written so far has been passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    _TERMINAL.append(os.isatty(saved))
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):  # Linux: room for bursts (1 MiB)
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 2**20)
    out = os.dup(saved)  # the thread's own: it may outlive the block if a writer lingers
    stop = threading.Event()
    passer = threading.Thread(
        target=_pass_lines, args=(read_end, out, noise, stop), name="stderr-filter", daemon=True
    )
    passer.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        _TERMINAL.pop()
        stop.set()
        passer.join(timeout=5)


# Whether the stderr each active `stderr_filtered` passes lines on to is a terminal (innermost
# last): inside the filter fd 2 is a pipe, but a progress bar is still for a person's eyes.
_TERMINAL: list[bool] = []


def stderr_is_terminal() -> bool:
    """Whether what goes to stderr reaches a terminal, also through `stderr_filtered`."""
    if _TERMINAL:
        return _TERMINAL[0]
    try:
        return os.isatty(2)
    except OSError:
        return False


def _pass_lines(read_end: int, out: int, noise: re.Pattern[bytes], stop: threading.Event) -> None:
    """`stderr_filtered`'s thread: read the pipe until every writer closed it, or until `stop`
    is set and nothing more is waiting in it."""
    pending = b""

    def write(data: bytes) -> None:
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(out, data) :]

    try:
        while True:
            # Read before waiting: what was written before `stop` was set is in the pipe now,
            # so a wait that finds the pipe empty after it means everything was passed on.
            stopping = stop.is_set()
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if not ready:
                if pending:
                    write(pending)
                    pending = b""
                if stopping:
                    break
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            write(b"".join(line + b"\n" for line in lines if not noise.search(line)))
        if pending and not noise.search(pending):
            write(pending)
    finally:
        os.close(read_end)
        os.close(out)


@contextlib.contextmanager
def verb_noise_filtered() -> Iterator[None]:
    """Keep start-up chatter from the user for the whole verb, from this process and from the
    processes it starts: TensorFlow's (`TF_STARTUP_NOISE`; Beam's workers load TensorFlow too)
    and Beam's workers' (`BEAM_WORKER_NOISE`). Every other line, errors included, still shows,
    as it is written.

    The lines come from C++ as TensorFlow's library loads, before Python could stop them, and
    from other processes, hence a filter on the file descriptor (`stderr_filtered`). A user who
    set TF_CPP_MIN_LOG_LEVEL gets exactly that level: then only the workers' lines are
    filtered."""
    noise = BEAM_WORKER_NOISE.pattern
    if USER_TF_LOG_LEVEL is None:
        noise = TF_STARTUP_NOISE.pattern + b"|" + noise
    with stderr_filtered(re.compile(noise)):
        yield


class CliError(TailingsError):
    """A bad flag or input found by the command line itself: one line to stderr, exit 1."""


T = TypeVar("T")


def config_from_flags(config: Callable[..., T], **fields: Any) -> T:
    """`config(**fields)` for a settings class that checks its values in `__post_init__`
    (`PredictConfig`, `ServerConfig`, `LabelReviewConfig`, `Thresholds`): the ValueError it
    raises for a bad flag value becomes a `CliError`, its message the one line."""
    try:
        return config(**fields)
    except ValueError as err:
        raise CliError(str(err)) from None


def check_model_name(name: str) -> str:
    """`--model-name` of every verb: a folder name under the serving directory, never a path."""
    from serving.config import MODEL_NAME_RE

    if not MODEL_NAME_RE.fullmatch(name):
        raise CliError(f"--model-name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def check_run_recorded(
    metadata_path: Path,
    run_id: str | None,
    *,
    statistics: bool = False,
    no_store_hint: str = "run `tailings run` first",
) -> None:
    """Refuse, with ML Metadata alone, a run a verb cannot read: no store, no runs, an unknown
    run id, or (with `statistics`) a run that stopped before StatisticsGen wrote its output.

    Verbs that read a run (`stats`, `report`, `schema infer`) call this before they import
    TensorFlow, TFX or Beam, so a mistyped run id is one line in a fraction of a second, not
    after 10-30 s of imports. Raises `pipeline.metadata.RunNotFound` (or `MetadataStoreError`
    for a damaged store): one line each, exit 1."""
    from pipeline import metadata, nodes

    run = metadata.open_run(metadata_path, run_id, no_store_hint)
    if statistics and run.artifact(nodes.STATISTICS_GEN, nodes.STATISTICS) is None:
        raise metadata.RunNotFound(
            f"run {run.run_id} has no StatisticsGen output (it stopped earlier)"
        )


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
