"""Run the pipeline with TFX's LocalDagRunner and summarise the run from ML Metadata.

The terminal gets one line per component (start, end, duration, cached or not), a line per
Trainer epoch and per Tuner trial (`components.progress`, relayed from the file the components
append them to; also written to the run's log), a line about every minute while an Evaluator
runs, and a summary; the full TFX/Beam/TensorFlow log goes to `<output-dir>/logs/`, where it
does not bury them.

When a run ends, what `tailings runs` shows of it is recorded on the run's ML Metadata context
(`pipeline.runs.RunDigest`), so that listing runs reads ML Metadata alone.

The run's outcome (`RunSummary`, `summarize_record`) is read by `pipeline.summary`, which
`pipeline.runs` imports too: this module imports both and neither imports it.

At module level this imports only ML Metadata, the stdlib and this project's light modules;
TFX, TensorFlow and the readers of the components' outputs load inside the functions that
need them.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components import progress
from data.lock import output_lock
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.runs import RunDigest
from pipeline.summary import RunSummary, summarize_record

log = logging.getLogger(__name__)

# While an Evaluator runs, a line this often says for how long so far.
HEARTBEAT_SECONDS = 60.0
# Beside the run's log: the file the components append their progress lines to while it runs.
PROGRESS_SUFFIX = ".progress"


class _ComponentProgress(threading.Thread):
    """The terminal's lines while the pipeline runs, polled every `every` s:

    - one line per component start and end, read from ML Metadata as TFX records it; an
      Evaluator's start line says what it does (`nodes.ACTIVITIES`), and while it runs a line
      every `heartbeat` s says for how long so far;
    - the components' own progress lines (a Trainer epoch, a Tuner trial:
      `components.progress`), read from the file they append to, shown indented and written
      to the run's log.

    Polling the store (read-only) and a file instead of parsing log lines keeps this
    independent of logging set-up, which TFX's components and Beam reconfigure while they run,
    and of which process a line comes from (the Tuner's trials run in processes of their own).
    """

    FINISHED = ("COMPLETE", "CACHED", "FAILED", "CANCELED")

    def __init__(
        self,
        sqlite_path: Path,
        say: Callable[[str], None],
        progress_file: Path | None = None,
        every: float = 1.0,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        super().__init__(daemon=True)
        self._path = sqlite_path
        self._say = say
        self._progress_file = progress_file
        self._read = 0  # bytes of the progress file already shown
        self._every = every
        self._heartbeat = heartbeat
        self._since_ms = int(time.time() * 1000)
        self._halt = threading.Event()
        self._nodes: dict[int, str] = {}
        self._done: set[int] = set()
        self._beats: dict[int, int] = {}  # execution id -> heartbeats shown

    def run(self) -> None:
        while not self._halt.wait(self._every):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()

    def poll(self) -> None:
        self._relay_progress()
        if not self._path.exists():
            return
        try:
            store = metadata.open_store(str(self._path))
            executions = [
                e for e in store.get_executions() if e.create_time_since_epoch >= self._since_ms
            ]
            for execution in sorted(executions, key=lambda e: e.id):
                self._report(store, execution)
        except Exception:  # noqa: BLE001 - the store may be mid-write; the next poll catches up
            return

    def _relay_progress(self) -> None:
        """Show the progress file's complete lines not shown yet; log them too."""
        if self._progress_file is None:
            return
        try:
            with open(self._progress_file, "rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except OSError:  # not written yet (or gone): nothing to show
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for its end
        self._read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            self._say(f"  {line}")
            log.info(line)

    def _report(self, store, execution) -> None:
        if execution.id not in self._nodes:
            node = self._nodes[execution.id] = metadata.node_id(store, execution)
            doing = f" ({nodes.ACTIVITIES[node]})" if node in nodes.ACTIVITIES else ""
            self._say(f"> {node} ...{doing}")
        node = self._nodes[execution.id]
        state = metadata.STATES.Name(execution.last_known_state)
        if state in self.FINISHED and execution.id not in self._done:
            self._done.add(execution.id)
            took = (
                execution.last_update_time_since_epoch - execution.create_time_since_epoch
            ) / 1e3
            note = {"CACHED": " (cached)", "FAILED": " FAILED", "CANCELED": " canceled"}.get(
                state, ""
            )
            self._say(f"< {node} done in {took:.1f} s{note}")
        elif state not in self.FINISHED and node in nodes.ACTIVITIES:
            running = time.time() - execution.create_time_since_epoch / 1e3
            beats = int(running // self._heartbeat)
            if beats > self._beats.get(execution.id, 0):
                self._beats[execution.id] = beats
                self._say(f"  {node} still running: {progress.duration(running)} so far")


class _LogFile(logging.FileHandler):
    """The run's log file. When it cannot be written (the disk filled up), it keeps the first
    OSError and drops later records, instead of Python printing a "--- Logging error ---"
    traceback for every record; `_restore_logs` reports the failure in one line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failure: OSError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            self.failure = err
        else:
            super().handleError(record)


@dataclass
class _SavedLogging:
    loggers: list[tuple[logging.Logger, list[logging.Handler], int]]
    log: _LogFile


def _route_logs(cfg: PipelineConfig) -> tuple[Path, _SavedLogging]:
    """Send Python logging to a per-run file under `<output-dir>/logs/`."""
    log_dir = cfg.output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / time.strftime("run-%Y%m%d-%H%M%S.log")
    file_handler = _LogFile(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved = _SavedLogging([(root, list(root.handlers), root.level)], file_handler)
    root.handlers = [file_handler]
    root.setLevel(logging.INFO)
    return log_file, saved


def _restore_logs(saved: _SavedLogging) -> None:
    """Put logging back as it was; close the log file, and say in one line if writing it
    failed (a full disk), which the log itself cannot tell."""
    for logger, handlers, level in saved.loggers:
        logger.handlers = handlers
        logger.setLevel(level)
    log = saved.log
    try:
        log.close()  # flushes: a disk that filled up may only show here
    except OSError as err:
        log.failure = log.failure or err
    if log.failure is not None:
        print(
            f"cannot write the log {log.baseFilename}: {log.failure.strerror or log.failure} "
            "(the records after that were dropped)",
            file=sys.stderr,
            flush=True,
        )


@contextlib.contextmanager
def _fds_to(log_file: Path):
    """Point fds 1 and 2 at the log; `say` keeps writing to a copy of the terminal's stderr.

    The terminal's fds come back whatever happens, also when the log's disk is full: then what
    Python could not flush to the log is dropped, not shown on the terminal afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log_file, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                _flush_or_drop()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _flush_or_drop() -> None:
    """Flush sys.stdout/sys.stderr into the log; if that fails (a full disk), flush them into
    /dev/null instead, so their buffers do not reach the terminal once it is back on fds 1/2."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        finally:
            os.close(devnull)


@contextlib.contextmanager
def _progress_to(path: Path):
    """Name `path` to the components as the file for their progress lines
    (`components.progress.PROGRESS_FILE_ENV`, inherited by the processes they start)."""
    saved = os.environ.get(progress.PROGRESS_FILE_ENV)
    os.environ[progress.PROGRESS_FILE_ENV] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(progress.PROGRESS_FILE_ENV, None)
        else:
            os.environ[progress.PROGRESS_FILE_ENV] = saved


def terminal_writer() -> Callable[[str], None]:
    """A `say` that reaches the terminal even while fds 1 and 2 point at the log."""
    stream = os.fdopen(os.dup(2), "w", buffering=1)

    def say(message: str) -> None:
        stream.write(message + "\n")

    return say


def describe_trainer(cfg: PipelineConfig) -> str:
    """One line: which preset trains, and every change made to it (--epochs, --set)."""
    changes = [f"epochs={cfg.epochs}"] if cfg.epochs is not None else []
    changes += list(cfg.overrides)
    trainer = cfg.trainer()
    line = f"Trainer: preset {cfg.preset} ({trainer.model.encoder}"
    line += f", {trainer.train.epochs} epochs"
    line += f", test-time augmentation {trainer.model.test_time_augmentation})"
    line += f", changed: {', '.join(changes)}" if changes else ""
    if cfg.tune is not None:
        t = cfg.tune
        line += (
            f"; Tuner first: {t.trials} trials of {t.epochs} epochs, {t.workers} at once, "
            "the Trainer takes the best values"
        )
    return line


def new_run_id() -> str:
    """A pipeline run id in TFX's own format (local ISO time, here always with microseconds),
    so `tailings runs` reads and sorts ours like the ids TFX chose before."""
    return datetime.datetime.now().isoformat(timespec="microseconds")


def _local_dag_runner(run_id: str):
    """TFX's LocalDagRunner, running the pipeline under `run_id`.

    TFX 1.16 picks the run id inside `LocalDagRunner.run_with_ir`: it substitutes the IR's
    `pipeline-run-id` runtime parameter with `datetime.now().isoformat()`, and neither `run()`
    nor its `RunOptions` (partial-run settings only) lets a caller choose it. So we substitute
    the parameter first, with the same `runtime_parameter_utils` call; TFX's own substitution
    then finds no runtime parameter left to replace. Knowing the id before the run starts lets
    the summary read this run's record, not merely the newest one in the store (which another
    run, or anything else writing the store, may have added meanwhile).
    """
    from tfx.dsl.compiler import constants
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.portable import runtime_parameter_utils

    class _OwnRunId(LocalDagRunner):
        def run_with_ir(self, pipeline, run_options=None, **kwargs):
            runtime_parameter_utils.substitute_runtime_parameter(
                pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id}
            )
            return super().run_with_ir(pipeline, run_options=run_options, **kwargs)

    return _OwnRunId()


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] | None = None) -> RunSummary:
    """Build and run the pipeline; whatever happens, summarise what ML Metadata recorded of it.

    The output folder is locked for the whole run (`data.lock`): a second run or conversion on
    it stops with `OutputBusy` (exit code 5) before anything is written there.
    """
    say = say or terminal_writer()

    if not (cfg.data_dir / "img").is_dir() or not (cfg.data_dir / "mask").is_dir():
        raise FileNotFoundError(
            f"{cfg.data_dir} must hold img/ and mask/ folders (try `tailings fetch-data`)"
        )
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(cfg.output_dir, "run", say):
        return _run_locked(cfg, say)


def _run_locked(cfg: PipelineConfig, say: Callable[[str], None]) -> RunSummary:
    from components.validation_gate import AnomaliesFound
    from pipeline.pipeline import create_pipeline

    metadata.check_store(cfg.metadata_path)  # a damaged store: one line, before anything runs
    start = time.monotonic()
    run_id = new_run_id()
    log_file, saved = _route_logs(cfg)
    say(f"run {run_id}")
    say(f"logs: {log_file}")
    say(describe_trainer(cfg))
    progress_file = log_file.with_suffix(PROGRESS_SUFFIX)
    watcher = _ComponentProgress(cfg.metadata_path, say, progress_file)
    watcher.start()
    error = None
    try:
        # TFX, Beam, TensorFlow and the pip install of the module files print to stdout/stderr,
        # also from subprocesses and C++: send the file descriptors themselves to the log.
        with _fds_to(log_file), _progress_to(progress_file):
            _local_dag_runner(run_id).run(create_pipeline(cfg))
    except AnomaliesFound:
        pass  # the summary lists them from the ExampleValidator's artifact
    except Exception as err:  # noqa: BLE001 - any component failure ends the run; report it
        logging.getLogger(__name__).exception("pipeline failed")
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        error += f" (full log: {log_file})"
    finally:
        watcher.stop()
        with contextlib.suppress(OSError):  # every line it held is in the log now
            progress_file.unlink(missing_ok=True)
        _restore_logs(saved)
    seconds = time.monotonic() - start
    store = metadata.open_store(str(cfg.metadata_path)) if cfg.metadata_path.exists() else None
    run = metadata.load_run(store, run_id, missing_ok=True) if store is not None else None
    if run is not None:
        summary = summarize_record(run, seconds)
        _record_digest(cfg, run_id, summary, say)
    else:  # stopped before TFX recorded anything under this run's id
        summary = RunSummary(run_id=run_id, seconds=seconds, error="no run recorded")
    if error and not summary.anomalies:
        summary.error = error
    return summary


def _record_digest(
    cfg: PipelineConfig, run_id: str, summary: RunSummary, say: Callable[[str], None]
) -> None:
    """Record what `tailings runs` shows of this run on its ML Metadata context, so that listing
    runs reads ML Metadata alone instead of loading TFMA and TensorFlow for every listing.

    A run that failed or stopped at data anomalies gets its digest too (what it got as far as).
    A store that cannot be written now costs only that: `tailings runs` then reads this run's
    outputs, as for a run recorded before digests existed; the run's outcome is unchanged."""
    try:
        metadata.record_run_property(
            cfg.metadata_path,
            run_id,
            nodes.RUN_SUMMARY_PROPERTY,
            RunDigest.of(summary).to_json(),
        )
    except metadata.MetadataStoreError as err:
        say(f"{err} (`tailings runs` reads this run's outputs instead)")
