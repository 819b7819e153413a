"""The flags `tailings run` and `tailings compile` share, added and checked in one place: the
model (preset, epochs, Trainer settings, name), the blessing thresholds and the Beam workers."""

from __future__ import annotations

import argparse

from tailings.common import CliError, check_model_name, config_from_flags

THRESHOLD_FLAGS = (  # flag, Thresholds field, what it bounds
    ("--min-pixel-accuracy", "min_pixel_accuracy", "pixel accuracy"),
    ("--min-accuracy-gain", "min_accuracy_gain", "pixel accuracy minus all-background's"),
    ("--min-facility-recall", "min_facility_recall", "share of facilities found"),
    ("--min-iou", "min_iou", "tailings IoU"),
)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    from components.config import PRESETS, TuneConfig
    from pipeline.config import PipelineConfig, Thresholds

    d, t = PipelineConfig(), Thresholds()
    p.add_argument("--preset", choices=sorted(PRESETS), default=d.preset, help="model preset")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PART.FIELD=VALUE",
        help="change one Trainer setting of the preset, e.g. --set "
        "model.test_time_augmentation=none or --set train.batch_size=8 (repeatable; fields: "
        "components/config.py)",
    )
    p.add_argument("--model-name", default=d.model_name, help="default: %(default)s")
    for flag, field, what in THRESHOLD_FLAGS:
        p.add_argument(
            flag,
            type=float,
            default=getattr(t, field),
            help=f"blessing threshold on the scene split: {what} (default: %(default)s)",
        )
    p.add_argument(
        "--workers", type=int, default=d.workers, help="Beam DirectRunner workers (%(default)s)"
    )
    tune = TuneConfig()
    p.add_argument(
        "--tune",
        action="store_true",
        help="search the Trainer's settings with TFX's Tuner first (KerasTuner, Bayesian "
        "optimisation, trials scored on scene windows of a held-out part of the train split); "
        "the Trainer trains with the best",
    )
    for name, what in (
        ("trials", "trials of the search"),
        ("epochs", "epochs of each trial"),
        ("workers", "trials at once, each in its own process (KerasTuner's chief and workers)"),
    ):
        p.add_argument(
            f"--tune-{name}",
            type=int,
            default=None,
            metavar="N",
            help=f"with --tune: {what} (default: {getattr(tune, name)})",
        )


def pipeline_settings(args: argparse.Namespace) -> dict:
    """The checked values of those flags, as `PipelineConfig` keyword arguments."""
    from pipeline.config import Thresholds

    check_model_name(args.model_name)
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.epochs is not None and args.epochs < 1:
        raise CliError(f"--epochs must be at least 1, got {args.epochs}")
    thresholds = config_from_flags(
        Thresholds, **{field: getattr(args, field) for _, field, _ in THRESHOLD_FLAGS}
    )
    return {
        "tune": tune_settings(args),
        "model_name": args.model_name,
        "preset": args.preset,
        "epochs": args.epochs,
        "overrides": tuple(args.overrides),
        "workers": args.workers,
        "thresholds": thresholds,
    }


def tune_settings(args: argparse.Namespace):  # -> components.config.TuneConfig | None
    """The search `--tune` asks for, or None; a --tune-* flag without --tune is an error."""
    from components.config import TuneConfig

    given = {n: getattr(args, f"tune_{n}") for n in ("trials", "epochs", "workers")}
    given = {n: v for n, v in given.items() if v is not None}
    if not args.tune:
        if given:
            raise CliError(f"--tune-{next(iter(given))} needs --tune")
        return None
    try:
        return TuneConfig(**given)
    except ValueError as err:
        raise CliError(str(err)) from None


def check_trainer_settings(cfg) -> None:
    """A bad --set name or value fails here, before anything runs."""
    try:
        cfg.trainer()
    except ValueError as err:
        raise CliError(f"--set {err}") from None
