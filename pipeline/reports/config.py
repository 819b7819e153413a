"""Every knob of `tailings stats` and `tailings report`, with its default, in one place."""

from __future__ import annotations

from dataclasses import dataclass

TRAIN = "train"
EVAL = "eval"
SCENE = "scene"  # the Evaluator's scene windows (data/scenes.py)
ALL_SPLITS = "all"


@dataclass(frozen=True)
class ReportConfig:
    """How much the reports show and how the pictures look."""

    # Thumbnails (RGB with the mask outlined) per split in the stats page.
    thumbnails_per_split: int = 4
    # Trainer figures (image | truth | prediction) embedded in the run report.
    max_figures: int = 12
    # A TFRecord folder has no splits: its statistics are shown under this name...
    folder_split: str = "folder"
    # ...and compared for drift with this split of the other run (what the model learned from).
    drift_reference_split: str = TRAIN
    # A statistics file's dataset without a name (and not under StatisticsGen's Split-<name>).
    file_split: str = "file"
    # Skew (TFDV's skew comparator) is measured between this split and each other split.
    skew_reference_split: str = TRAIN
    # Terminal histograms: every split (and the reference) re-bucketed onto one shared range.
    shared_buckets: int = 10
    # Quantiles shown in the HTML tables (TFDV keeps deciles: 0.1 steps only).
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    # Terminal histogram: one character per TFDV bucket, low to high.
    sparkline: str = "▁▂▃▄▅▆▇█"
    # Matplotlib output, embedded as base64 PNG.
    dpi: int = 90
    histogram_inches: tuple[float, float] = (4.2, 2.4)
    thumbnail_inches: float = 2.2
    mask_outline_color: str = "#ffd400"


DEFAULTS = ReportConfig()  # the default argument of every report function
