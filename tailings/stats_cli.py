"""`tailings stats` and `tailings report`: look at the data and at a run before trusting a model.

Registered in `tailings.cli.VERBS`; heavy libraries load inside the verbs so `--help` is fast,
and only after the flags, the input folders and the run (looked up in ML Metadata alone,
`tailings.common.check_run_recorded`) were checked: a mistyped run id is one line at once.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from data.errors import EXIT_ANOMALIES
from tailings.common import (
    EXIT_OK,
    CliError,
    cannot_write,
    check_run_recorded,
    check_writable,
    say,
)

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

LATEST = "latest"


def _output_dir_argument(p: argparse.ArgumentParser) -> None:
    from pipeline.config import PipelineConfig

    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        default=PipelineConfig().output_dir,
        help="where `tailings run` keeps metadata.sqlite (default: %(default)s)",
    )


# --------------------------------------------------------------------------- stats
def add_stats(sub) -> None:
    from pipeline.reports.config import ALL_SPLITS, EVAL, SCENE, TRAIN

    p = sub.add_parser(
        "stats",
        help="data statistics of a run or a TFRecord folder: tables, anomalies, drift, HTML",
        description=(
            "Show TFDV statistics per split (count, missing, zeros, mean, std, min, median, "
            "max, histogram), anomalies and rejected pairs of a pipeline run (the latest by "
            "default), or of a folder of converted TFRecords with --examples: each feature's "
            "splits side by side, with TFDV's skew between the train split and the others. "
            "--html writes one offline page with histograms and example thumbnails. --compare "
            "measures drift against a reference (a run, a TFRecord folder or a statistics "
            "file) with the thresholds set in schemas/schema.pbtxt, and exits 4 on drift."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", default=LATEST, metavar="ID", help="run id (default: %(default)s)")
    source.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help="folder of *.tfrecord.gz from `tailings convert` (no pipeline run needed)",
    )
    p.add_argument(
        "--split",
        choices=(TRAIN, EVAL, SCENE, ALL_SPLITS),
        default=ALL_SPLITS,
        help="a run's split to show (default: %(default)s)",
    )
    p.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML page here"
    )
    p.add_argument(
        "--compare",
        metavar="REF",
        help="measure drift against REF: a run id, a folder of *.tfrecord.gz, or a TFDV "
        "statistics file (e.g. a run's StatisticsGen Split-train/FeatureStats.pb); "
        f"exit {EXIT_ANOMALIES} if any feature drifts",
    )
    _output_dir_argument(p)
    p.set_defaults(func=_stats)


def _stats(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig
    from pipeline.reports.config import ALL_SPLITS

    cfg = PipelineConfig(output_dir=args.output_dir)
    if args.examples is not None and args.split != ALL_SPLITS:
        raise CliError("--split applies to runs; a TFRecord folder has no train/eval splits")
    if args.compare:
        _check_reference(args.compare, cfg)
    if args.html:  # before TensorFlow loads and TFDV spends minutes on statistics
        check_writable(args.html, "--html", is_file=True)
    if args.examples is not None:  # the folder and its shards, before TensorFlow loads
        from data.reader import shard_files

        if not args.examples.exists():
            raise CliError(f"--examples folder does not exist: {args.examples}")
        try:
            shard_files(args.examples)
        except FileNotFoundError as err:
            raise CliError(str(err)) from None
    else:  # the run and its statistics, in ML Metadata, before TensorFlow loads
        check_run_recorded(
            cfg.metadata_path,
            args.run,
            statistics=True,
            no_store_hint="run `tailings run` or pass --examples",
        )
    from pipeline.reports import drift as drift_lib
    from pipeline.reports import stats
    from pipeline.reports.stats_page import stats_html
    from pipeline.reports.terminal import stats_lines

    schema = drift_lib.load_schema()
    drift = reference = None
    if args.compare:  # first: an unknown run id or a bad file is found before minutes of TFDV
        if Path(args.compare).is_dir():
            say(f"computing statistics of {args.compare} with TFDV ...")
        reference = stats.load_reference(args.compare, cfg)
    if args.examples is not None:
        say(f"computing statistics of {args.examples} with TFDV ...")
        data = stats.from_examples(args.examples)
    else:
        data = stats.from_run(cfg, args.run)
    skew = drift_lib.skew(data, schema)  # before --split: the train split is the baseline
    if args.split != ALL_SPLITS:
        data = data.only(args.split)
        skew = [d for d in skew if d.split == args.split]
    if reference is not None:
        drift = drift_lib.compare(data, reference, schema)
    for line in stats_lines(data, drift, reference, skew):
        print(line)
    if args.html:
        say(f"rendering {args.html} ...")
        _write(args.html, stats_html(data, drift, reference, skew))
    if drift is not None and drift_lib.found(drift):
        drifted = sorted({d.feature for d in drift if d.drifted or d.problem})
        say(f"drift against {reference.source}: {', '.join(drifted)} (exit {EXIT_ANOMALIES})")
        return EXIT_ANOMALIES
    return EXIT_OK


# What a statistics file or a TFRecord folder looks like, to tell a mistyped path from a run id.
PATH_SUFFIXES = (".pb", ".pbtxt", ".txt", ".tfrecord", ".stats")


def _check_reference(spec: str, cfg: PipelineConfig) -> None:
    """A --compare path that does not exist, or a run id the metadata store does not know (or
    whose run has no statistics), is refused now, not after minutes of statistics and before
    TensorFlow loads."""
    from pipeline.metadata import MetadataStoreError, RunNotFound

    path = Path(spec)
    if path.exists():
        return
    if "/" in spec or path.suffix in PATH_SUFFIXES:
        raise CliError(f"--compare {spec}: no such folder or statistics file")
    try:
        check_run_recorded(cfg.metadata_path, spec, statistics=True)
    except (RunNotFound, MetadataStoreError) as err:  # as `stats.load_reference` says it
        raise CliError(
            f"--compare {spec}: not a folder or statistics file, and as a run id: {err}"
        ) from None


# --------------------------------------------------------------------------- report
def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page per pipeline run: data, metrics, blessing, figures",
        description=(
            "Write one offline HTML page for a run (the latest by default): data summary, "
            "evaluation metrics against the thresholds the run used and the all-background "
            "baseline, blessing, pushed version, training curves, and the Trainer's "
            "image | truth | prediction figures."
        ),
    )
    p.add_argument("--run", default=LATEST, metavar="ID", help="run id (default: %(default)s)")
    p.add_argument("--html", type=Path, metavar="FILE", required=True, help="the page to write")
    _output_dir_argument(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import PipelineConfig

    cfg = PipelineConfig(output_dir=args.output_dir)
    # The page's folder, then the run (in ML Metadata), before TensorFlow and TFX load.
    check_writable(args.html, "--html", is_file=True)
    check_run_recorded(cfg.metadata_path, args.run)
    from pipeline.reports.run_report import load_report, report_html
    from pipeline.reports.terminal import site_lines

    report = load_report(cfg, args.run)
    for line in [*report.summary.lines(), *site_lines(report.summary.sites)]:
        print(line)
    _write(args.html, report_html(report))
    return EXIT_OK


def _write(path: Path, page: str) -> None:
    """Write the page (its folder was checked by `check_writable` before the work began)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as err:  # e.g. the disk filled up meanwhile: no half-written page left
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise cannot_write("--html", path, err) from None
    say(f"wrote {path} ({len(page.encode()) / 1e3:.0f} kB, self-contained)")
