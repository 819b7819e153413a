"""Run the pipeline with TFX's LocalDagRunner and summarise the run from ML Metadata.

The terminal gets one line per component (start, end, duration, cached or not) and a summary;
the full TFX/Beam/TensorFlow log goes to `<output-dir>/logs/`, where it does not bury them.

When a run ends, what `tailings runs` shows of it is recorded on the run's ML Metadata context
(`pipeline.runs.RunDigest`), so that listing runs reads ML Metadata alone.

At module level this imports only ML Metadata, the stdlib and this project's light modules
(`tailings runs` imports it for a run recorded without that digest); TFX, TensorFlow and the
readers of the components' outputs load inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from data.errors import EXIT_ANOMALIES
from data.lock import output_lock
from data.sites import SITES_FILE
from pipeline import metadata, nodes
from pipeline.config import PipelineConfig
from pipeline.runs import RunDigest
from pipeline.tuning import Search, read_search, search_lines

if TYPE_CHECKING:
    from pipeline.evaluation import SplitEvaluation

# Exit codes of `tailings run` (the README's exit code table; docs/pipeline.md); data
# anomalies stop a run with `data.errors.EXIT_ANOMALIES` (4), the code `tailings stats
# --compare` gives drift too.
EXIT_BLESSED = 0
EXIT_ERROR = 1
EXIT_NOT_BLESSED = 3


@dataclass
class RunSummary:
    run_id: str | None
    seconds: float
    converted: int | None = None
    rejected: list[dict] = field(default_factory=list)
    # The ConversionReport's sites.jsonl: one row per site (tiles, split, label agreement).
    sites: list[dict] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    # Per split the Evaluators scored: the scene split (gate) first, then the eval tiles.
    evaluations: dict[str, SplitEvaluation] = field(default_factory=dict)
    scene_windows: int | None = None
    blessed: bool | None = None
    pushed_version: str | None = None
    pushed_path: str | None = None
    reused_version: bool = False
    error: str | None = None
    search: Search | None = None  # the Tuner's trials (`tailings run --tune`)

    @property
    def gate(self) -> SplitEvaluation:
        """The evaluation that decided the blessing (the scene split's)."""
        from pipeline.evaluation import SplitEvaluation

        return self.evaluations.get(nodes.SCENE_SPLIT) or SplitEvaluation(nodes.SCENE_SPLIT)

    @property
    def metrics(self) -> dict[str, float]:
        """The gate split's overall metric values."""
        return self.gate.values()

    @property
    def thresholds(self) -> dict[str, float]:
        """Lower bounds the run applied on the gate split (its recorded EvalConfig)."""
        return self.gate.lower_bounds()

    @property
    def failures(self) -> list[str]:
        return self.gate.failures

    @property
    def exit_code(self) -> int:
        if self.anomalies:
            return EXIT_ANOMALIES
        if self.error:
            return EXIT_ERROR
        return EXIT_BLESSED if self.blessed else EXIT_NOT_BLESSED

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}: {self.seconds:.0f} s"]
        if self.converted is not None:
            kept = [r for r in self.sites if r.get("converted")]
            in_sites = f" in {len(kept)} sites" if self.sites else ""
            out.append(
                f"pairs: {self.converted} converted{in_sites}, {len(self.rejected)} rejected"
            )
            if self.scene_windows is not None:
                eval_sites = sum(1 for r in kept if r.get("split") == nodes.EVAL_SPLIT)
                source = f"the {eval_sites} eval sites" if self.sites else "the eval tiles"
                out.append(f"scene split: {self.scene_windows} windows cut from {source}")
            out += [f"  rejected {r['id']}: {r['reason']} ({r['detail']})" for r in self.rejected]
        if self.anomalies:
            out.append(f"anomalies: {len(self.anomalies)} (run stopped before Transform)")
            out += [f"  {a}" for a in self.anomalies]
        elif self.converted is not None:
            out.append("anomalies: none")
        if self.search is not None:
            out += search_lines(self.search)
        for evaluation in self.evaluations.values():
            out += evaluation_lines(evaluation)
        if self.blessed is not None:
            out.append("BLESSED" if self.blessed else "NOT BLESSED: nothing pushed")
        if self.pushed_path:
            how = "already serving, not pushed again" if self.reused_version else "pushed"
            out.append(f"model {how}: version {self.pushed_version} at {self.pushed_path}")
        if self.error:
            out.append(f"error: {self.error}")
        return out


TILE_ROWS_SHOWN = 8  # the terminal shows the worst tiles; the report shows them all


# What `evaluation_lines` shows of each site's slice (metric, label).
SITE_METRICS = (
    (nodes.IOU, "IoU"),
    (nodes.FACILITY_RECALL, "facility recall"),
    ("labelled_share", "labelled"),
)


def site_order(metrics: dict, site: str) -> tuple:
    iou = metrics.get(nodes.IOU)
    return (iou.value if iou is not None else 2.0, site)


def evaluation_lines(e: SplitEvaluation, tile_rows: int = TILE_ROWS_SHOWN) -> list[str]:
    """One split's metrics with intervals, its gates, and its worst tiles, for the terminal."""
    from pipeline.evaluation import DROP_GATE

    out = [f"evaluation, {nodes.SPLIT_DESCRIPTIONS.get(e.split, e.split)}:"]
    out.append(f"  {'metric':<24} value [95 % bootstrap interval]")
    for name, estimate in sorted(e.metrics.items()):
        out.append(f"  {name:<24} {estimate}")
    for g in e.gates:
        how = "vs. last blessed model, " if g.kind == DROP_GATE else ""
        verdict = "ok" if g.passed else "FAILED"
        out.append(f"  gate {g.metric} {how}{g.kind} {g.bound:g}: {e.shown(g)} {verdict}")
    if e.sites:
        out.append(f"  by site ({len(e.sites)}; TFMA's slices), lowest IoU first:")
        for site, m in sorted(e.sites.items(), key=lambda kv: site_order(kv[1], kv[0])):
            shown = "  ".join(f"{label} {m[name]}" for name, label in SITE_METRICS if name in m)
            out.append(f"    {site:<12} {shown}")
    if e.tiles:
        out.append(
            f"  worst {min(tile_rows, len(e.tiles))} of {len(e.tiles)} by share of wrong pixels "
            "(labelled / predicted tailings share, IoU):"
        )
        for row in e.tiles[:tile_rows]:
            out.append(
                f"    {row.pair_id:<26} {row.wrong_share:6.1%} of wrong pixels  "
                f"{row.labelled_share:6.1%} / {row.predicted_share:6.1%}  IoU {row.iou:.3f}"
            )
    return out


class _ComponentProgress(threading.Thread):
    """One terminal line per component start and end, read from ML Metadata as TFX records it.

    Polling the store (read-only) instead of parsing log lines keeps this independent of
    logging set-up, which TFX's components and Beam reconfigure while they run.
    """

    FINISHED = ("COMPLETE", "CACHED", "FAILED", "CANCELED")

    def __init__(self, sqlite_path: Path, say: Callable[[str], None], every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self._path = sqlite_path
        self._say = say
        self._every = every
        self._since_ms = int(time.time() * 1000)
        self._halt = threading.Event()
        self._nodes: dict[int, str] = {}
        self._done: set[int] = set()

    def run(self) -> None:
        while not self._halt.wait(self._every):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()

    def poll(self) -> None:
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

    def _report(self, store, execution) -> None:
        if execution.id not in self._nodes:
            self._nodes[execution.id] = metadata.node_id(store, execution)
            self._say(f"> {self._nodes[execution.id]} ...")
        state = metadata.STATES.Name(execution.last_known_state)
        if state in self.FINISHED and execution.id not in self._done:
            self._done.add(execution.id)
            took = (
                execution.last_update_time_since_epoch - execution.create_time_since_epoch
            ) / 1e3
            note = {"CACHED": " (cached)", "FAILED": " FAILED", "CANCELED": " canceled"}.get(
                state, ""
            )
            self._say(f"< {self._nodes[execution.id]} done in {took:.1f} s{note}")


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
    progress = _ComponentProgress(cfg.metadata_path, say)
    progress.start()
    error = None
    try:
        # TFX, Beam, TensorFlow and the pip install of the module files print to stdout/stderr,
        # also from subprocesses and C++: send the file descriptors themselves to the log.
        with _fds_to(log_file):
            _local_dag_runner(run_id).run(create_pipeline(cfg))
    except AnomaliesFound:
        pass  # the summary lists them from the ExampleValidator's artifact
    except Exception as err:  # noqa: BLE001 - any component failure ends the run; report it
        logging.getLogger(__name__).exception("pipeline failed")
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        error += f" (full log: {log_file})"
    finally:
        progress.stop()
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


def summarize_run(cfg: PipelineConfig, seconds: float, run_id: str | None = None) -> RunSummary:
    """Read one run's outcome (the latest when `run_id` is None) from ML Metadata and the
    artifacts it points to. A caller that holds the run's record: `summarize_record`."""
    store = metadata.open_store(str(cfg.metadata_path))
    run = metadata.load_run(store, run_id)
    if run is None:
        return RunSummary(run_id=None, seconds=seconds, error="no run recorded")
    return summarize_record(run, seconds)


def summarize_record(run: metadata.RunRecord, seconds: float) -> RunSummary:
    """A run's outcome from its record in ML Metadata and the artifacts it points to (their
    readers load only for the artifacts the run has)."""
    s = RunSummary(run_id=run.run_id, seconds=seconds)
    report = run.artifact(nodes.EXAMPLE_GEN, nodes.CONVERSION_REPORT)
    if report is not None:
        s.converted = metadata.custom(report, "converted")
        s.scene_windows = metadata.custom(report, "scene_windows")
        rejected = os.path.join(report.uri, "rejected.jsonl")
        if os.path.exists(rejected):
            s.rejected = [json.loads(x) for x in open(rejected).read().splitlines() if x]
        sites = os.path.join(report.uri, SITES_FILE)
        if os.path.exists(sites):
            s.sites = [json.loads(x) for x in open(sites).read().splitlines() if x]
    anomalies = run.artifact(nodes.EXAMPLE_VALIDATOR, nodes.ANOMALIES)
    if anomalies is not None:
        from components.anomalies import list_anomalies

        splits = json.loads(metadata.custom(anomalies, "split_names") or "[]") or [
            nodes.TRAIN_SPLIT,
            nodes.EVAL_SPLIT,
        ]
        s.anomalies = [str(a) for a in list_anomalies(anomalies.uri, splits)]
    for node, split in nodes.EVALUATORS:
        evaluation = run.artifact(node, nodes.EVALUATION)
        if evaluation is not None:
            from pipeline.evaluation import load_evaluation

            s.evaluations[split] = load_evaluation(evaluation.uri, split)
    s.search = read_search(run)
    blessing = run.artifact(nodes.SCENE_EVALUATOR, nodes.BLESSING)
    if blessing is not None:
        s.blessed = bool(metadata.custom(blessing, "blessed"))
    pushed = run.artifact(nodes.PUSHER, nodes.PUSHED_MODEL)
    if pushed is not None and metadata.custom(pushed, "pushed"):
        s.pushed_version = metadata.custom(pushed, "pushed_version")
        s.pushed_path = metadata.custom(pushed, "pushed_destination")
        s.reused_version = bool(metadata.custom(pushed, "reused_version"))
    return s
