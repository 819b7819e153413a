"""`tailings`: one verb per job. Heavy libraries are imported inside each verb, so `--help` is fast.

Exit codes: 0 success; 1 the job ran into bad input or produced nothing; 2 usage errors (argparse);
5 another run or conversion holds the output folder; `tailings run` adds 3 (not blessed) and 4
(data anomalies). Every error meant for a user is a `data.errors.TailingsError`, caught once in
`main` and printed as one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tailings.common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    TailingsError,
    cannot_write,
    check_run_recorded,
    check_writable,
    os_error_line,
    say,
    verb_noise_filtered,
)
from tailings.compile_cli import add_compile
from tailings.labels_cli import add_labels
from tailings.pipeline_args import add_pipeline_arguments, check_trainer_settings, pipeline_settings
from tailings.serving_cli import add_predict, add_serve
from tailings.stats_cli import add_report, add_stats

DEFAULT_DATA = Path("data/brazil-tailings")


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Arguments after a bare `--` go to Beam unchanged."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


# --------------------------------------------------------------------------- convert
def _add_convert(sub) -> None:
    from data.config import ConversionConfig

    d = ConversionConfig()
    p = sub.add_parser(
        "convert",
        help="convert GeoTIFF image/mask pairs into sharded GZIP TFRecords (Apache Beam)",
        description=(
            "Pair img_<id>.tif with mask_<id>.tif (or equal names), validate each pair and "
            "write tf.Example shards, rejected.jsonl and summary.json. Arguments after `--` "
            "are passed to Beam unchanged (e.g. -- --runner=DataflowRunner --project=...)."
        ),
    )
    p.add_argument("--images", required=True, type=Path, help="folder of image GeoTIFFs")
    p.add_argument("--masks", required=True, type=Path, help="folder of mask GeoTIFFs")
    p.add_argument("--output", required=True, help="output folder (local path or gs://...)")
    p.add_argument(
        "--workers", type=int, default=d.workers, help="DirectRunner workers (default: %(default)s)"
    )
    p.add_argument(
        "--shards", type=int, default=d.shards, help="TFRecord shards (default: %(default)s)"
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="reviewed labels (labels.yaml): its excluded pairs are rejected with reason "
        "excluded_by_review (default: labels.yaml in the folder holding --images, if any)",
    )
    p.add_argument(
        "--running-mode",
        choices=("multi_processing", "multi_threading"),
        default=d.running_mode,
        help="how the DirectRunner runs more than one worker (default: %(default)s)",
    )
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data.config import ConversionConfig

    for label, folder in (("--images", args.images), ("--masks", args.masks)):
        if not folder.is_dir():
            raise CliError(f"{label} folder does not exist: {folder}")
    if args.workers < 1 or args.shards < 1:
        raise CliError("--workers and --shards must be at least 1")
    if args.labels is not None and not args.labels.is_file():
        raise CliError(f"--labels {args.labels}: no such file")
    if beam_args:  # Beam's own checks (Beam's import only), before TensorFlow and the job
        # Any runner, Dataflow too: its workers must be able to read --images and --masks
        # (docs/conversion.md, "Running the conversion elsewhere"), which cannot be checked
        # from here.
        _check_beam_args(beam_args, local=None)
    excluded = _exclusions(args.images, args.masks, args.labels or args.images.resolve().parent)
    check_writable(args.output, "--output")  # a local folder; gs://... is left to Beam
    from data.convert import run_conversion, shard_write_failure
    from data.sites import SITES_FILE

    cfg = ConversionConfig(workers=args.workers, shards=args.shards, running_mode=args.running_mode)
    try:
        with _QuietShardWriteFailures():
            summary = run_conversion(
                str(args.images),
                str(args.masks),
                args.output,
                cfg,
                beam_args,
                say=say,
                excluded=excluded,
            )
    except Exception as err:  # Beam re-raises a worker's error as a new one, or only its text
        failure = shard_write_failure(err)
        if failure is None:
            raise
        shard, reason = failure
        note = f"{shard.rsplit('/', 1)[-1]} not written; no partial shard left"
        raise cannot_write("--output", args.output, reason, note) from None
    say(summary.one_line())
    say(f"wrote {args.output}/ ({cfg.rejected_file}, {cfg.summary_file}, {SITES_FILE}, shards)")
    if summary.converted == 0:
        raise CliError(
            f"nothing converted: all {summary.pairs_found} pairs were rejected; "
            f"see {args.output}/{cfg.rejected_file}"
        )
    return EXIT_OK


def _check_beam_args(beam_args: list[str], *, local: str | None) -> None:
    """`pipeline.beam_args.check_beam_args` on the options after `--`, its error as one line
    that starts with `--`."""
    from pipeline.beam_args import BeamArgsError, check_beam_args

    try:
        check_beam_args(beam_args, local=local)
    except BeamArgsError as err:
        raise CliError(f"-- {err}") from None


class _QuietShardWriteFailures(logging.Filter):
    """While a conversion runs: drop Beam's log records (each a full traceback) of a shard
    that could not be written; `_convert` reports that failure once, in one line."""

    LOGGERS = (
        "apache_beam.runners.common",  # in-process DoFn errors
        "apache_beam.runners.worker.sdk_worker",  # --running-mode multi_threading
        "apache_beam.runners.portability.local_job_service",  # multi_processing workers
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return self._shard_write_failure(record.getMessage()) is None

    def __enter__(self) -> None:
        from data.convert import shard_write_failure  # once, not on every log record

        self._shard_write_failure = shard_write_failure
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _exclusions(images: Path, masks: Path, labels: Path) -> dict[str, str]:
    """Pair id -> reason for the pairs a reviewed labels file excludes (`data.labels`);
    `labels` is the file or the folder holding labels.yaml. Checked before anything runs."""
    from data.labels import exclusions, labels_path, read_labels
    from data.pairs import discover_pairs

    path = labels if labels.is_file() else labels_path(labels)
    if not path.is_file() or not images.is_dir() or not masks.is_dir():
        return {}
    return exclusions(read_labels(path, {s.pair_id for s in discover_pairs(images, masks)}))


# --------------------------------------------------------------------------- fetch-data
def _add_fetch(sub) -> None:
    p = sub.add_parser(
        "fetch-data",
        help="fetch the study's image/mask pairs into data/brazil-tailings",
        description=(
            "Fetch the study's 114 Sentinel-2 image/mask pairs "
            "(github.com/IsasGithub/tailings_seg) "
            "or copy them from a local folder, skipping files already present and valid."
        ),
    )
    p.add_argument("--source", default=None, help="URL or local folder (default: the study's repo)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data.fetch import fetch_data

    result = fetch_data(args.source, args.dest, say=say)
    say(result.one_line())  # each failure was already reported with its reason as it happened
    return EXIT_OK if not result.failed else EXIT_FAILED


# --------------------------------------------------------------------------- run
def _add_run(sub) -> None:
    from pipeline.config import PipelineConfig

    d = PipelineConfig()
    p = sub.add_parser(
        "run",
        help="run the TFX pipeline: validate, transform, train, evaluate, push a blessed model",
        description=(
            "Run the TFX pipeline with the local runner (SQLite ML Metadata). Exit codes: "
            "0 blessed and pushed; 3 ran fine but not blessed (nothing pushed); "
            "4 data anomalies stopped the run; 1 any other error. Arguments after `--` go to "
            "every Beam-powered component unchanged (e.g. -- --runner=PortableRunner "
            "--job_endpoint=localhost:8099)."
        ),
    )
    p.add_argument("--data", type=Path, default=d.data_dir, help="folder with img/ and mask/")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=d.output_dir,
        help="pipeline root, metadata DB and logs (default: %(default)s)",
    )
    p.add_argument("--serving-dir", type=Path, default=d.serving_dir, help="default: %(default)s")
    add_pipeline_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig

    cfg = PipelineConfig(
        data_dir=args.data,
        output_dir=args.output_dir,
        serving_dir=args.serving_dir,
        beam_args=tuple(beam_args),
        **pipeline_settings(args),
    )
    check_trainer_settings(cfg)
    if not (cfg.data_dir / "img").is_dir() or not (cfg.data_dir / "mask").is_dir():
        # As run_pipeline says it; here before --output-dir is created.
        raise CliError(
            f"{cfg.data_dir} must hold img/ and mask/ folders (try `tailings fetch-data`)"
        )
    if beam_args:  # Beam's own checks (about 5 s of imports), before anything runs
        _check_beam_args(
            beam_args,
            local="its workers cannot reach this run's local files (pipeline root, metadata "
            "store); compile the pipeline for Vertex AI or Kubeflow with `tailings compile "
            "--beam-runner DataflowRunner ...` instead",
        )
    excluded = _exclusions(cfg.data_dir / "img", cfg.data_dir / "mask", cfg.data_dir)
    if excluded:
        say(f"labels.yaml: {len(excluded)} pair(s) excluded by review: {', '.join(excluded)}")
    # Outputs are checked now, not when the Pusher finds --serving-dir read-only after training.
    check_writable(cfg.output_dir, "--output-dir")
    check_writable(cfg.serving_dir, "--serving-dir")
    from pipeline.runner import run_pipeline  # TFX and TensorFlow: only once the input is fine

    try:
        summary = run_pipeline(cfg)
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    for line in summary.lines():
        print(line)
    return summary.exit_code


# --------------------------------------------------------------------------- runs
def _add_runs(sub) -> None:
    from pipeline.config import PipelineConfig

    p = sub.add_parser("runs", help="list past pipeline runs from the ML Metadata store")
    p.add_argument("--output-dir", type=Path, default=PipelineConfig().output_dir)
    p.set_defaults(func=_runs)


def _runs(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig
    from pipeline.runs import list_runs

    cfg = PipelineConfig(output_dir=args.output_dir)
    if not cfg.metadata_path.exists():
        raise CliError(f"no metadata store at {cfg.metadata_path}; run `tailings run` first")
    for line in list_runs(cfg):
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------------- schema
def _add_schema(sub) -> None:
    from pipeline.config import PipelineConfig
    from pipeline.schema_draft import DRAFT_NAME
    from schemas import SCHEMA_DIR

    p = sub.add_parser(
        "schema", help="schema tools: infer a draft to review against the curated one"
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    infer = actions.add_parser(
        "infer",
        help="write a TFDV-inferred schema draft next to schemas/schema.pbtxt",
        description="Infer a schema from a run's train statistics (default: the latest run) or "
        "from a folder of converted TFRecords, and write it for review; the curated schema "
        "is not touched.",
    )
    source = infer.add_mutually_exclusive_group()
    source.add_argument("--run", default=None, help="run id (default: latest)")
    source.add_argument("--examples", type=Path, help="folder of *.tfrecord.gz from `convert`")
    infer.add_argument("--output-dir", type=Path, default=PipelineConfig().output_dir)
    infer.add_argument(
        "--out", type=Path, default=SCHEMA_DIR / DRAFT_NAME, help="default: %(default)s"
    )
    infer.set_defaults(func=_schema_infer)


def _schema_infer(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig

    # The input and --out are checked before TFDV and TensorFlow load (about 10 s).
    check_writable(args.out, "--out", is_file=True)
    cfg = PipelineConfig(output_dir=args.output_dir)
    try:
        if args.examples is not None:
            from data.reader import shard_files

            files = shard_files(args.examples)  # a folder without shards: FileNotFoundError
        else:
            check_run_recorded(
                cfg.metadata_path,
                args.run,
                statistics=True,
                no_store_hint="run `tailings run` or pass --examples",
            )
        from pipeline.schema_draft import statistics_from_examples, statistics_from_run

        if args.examples is not None:
            stats = _statistics_of_shards(statistics_from_examples, args.examples, files)
        else:
            stats = statistics_from_run(cfg, args.run)
    except (FileNotFoundError, KeyError) as err:
        raise CliError(str(err).strip("'\"")) from None
    from pipeline.schema_draft import write_draft

    out = write_draft(stats, args.out)
    say(f"wrote {out}; review it against schemas/schema.pbtxt (the curated schema is unchanged)")
    return EXIT_OK


def _statistics_of_shards(compute: Callable, folder: Path, files: list[str]):
    """`compute(folder)`; when it fails (Beam's error, a long traceback, names no file, e.g. "Not
    a valid TFRecord"), the first shard that cannot be read whole, in one line."""
    try:
        return compute(folder)
    except Exception:
        from pipeline.reports.stats import first_unreadable_shard

        problem = first_unreadable_shard(files)
        if problem is None:  # every shard reads: not a shard's fault, the error as it was
            raise
        raise problem from None


# --------------------------------------------------------------------------- main
VERBS: tuple[Callable, ...] = (
    _add_convert,
    _add_fetch,
    _add_run,
    add_compile,
    _add_runs,
    _add_schema,
    add_stats,
    add_report,
    add_serve,
    add_predict,
    add_labels,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailings",
        description="Find mining tailings in Sentinel-2 imagery: convert, train, serve, predict.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    with verb_noise_filtered():  # TensorFlow's and Beam's workers' start-up lines
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    own, beam_args = _split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    if beam_args and args.verb not in ("convert", "run", "compile", "predict"):
        build_parser().error(
            f"`--` pass-through options are for convert, run, compile and predict, not {args.verb}"
        )
    start = time.monotonic()
    try:
        code = args.func(args, beam_args)
    except TailingsError as err:  # every error meant for the user, from any layer: one line
        print(f"tailings {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        # Last resort for the file system failing where no verb expected it (a disk filling up
        # mid-job): the path and the OS error, not a traceback. Verbs convert the failures they
        # can name a flag for where they write (tailings.common.check_writable, cannot_write).
        print(f"tailings {args.verb}: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tailings {args.verb}: interrupted", file=sys.stderr)
        return 130
    say(f"tailings {args.verb}: done in {time.monotonic() - start:.1f} s")
    return code
