"""Matplotlib pictures for the HTML pages, returned as PNG bytes to embed inline.

`matplotlib.figure.Figure` is used without pyplot: no global backend state, Agg output, safe
in any process (the CLI, tests, a notebook).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.reports.config import DEFAULTS, ReportConfig
from pipeline.reports.stats import Bucket

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Series:
    """One histogram line: a split's TFDV buckets under a label, solid or dashed."""

    label: str
    buckets: tuple[Bucket, ...]
    dashed: bool = False


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def data_uri(image: bytes, mime: str = "image/png") -> str:
    """An encoded image as a `data:` URI: the page stays one file and loads nothing."""
    return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")


def histogram_png(title: str, series: list[Series], rc: ReportConfig = DEFAULTS) -> bytes:
    """Equal-width TFDV histograms of one feature, overlaid as densities.

    Densities, not counts: splits of different sizes (train 80 %, eval 20 %) and buckets of
    different widths stay comparable. A constant feature has zero-width buckets and is drawn
    as one bar at its value.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=rc.histogram_inches, dpi=rc.dpi)
    axes = figure.add_subplot(1, 1, 1)
    for index, s in enumerate(series):
        if not s.buckets:
            continue
        color = f"C{index}"
        total = sum(b.count for b in s.buckets) or 1.0
        edges = np.array([s.buckets[0].low] + [b.high for b in s.buckets])
        widths = np.diff(edges)
        if not np.all(widths > 0):
            axes.axvline(s.buckets[0].low, color=color, linestyle="--" if s.dashed else "-")
            axes.plot([], [], color=color, label=f"{s.label} (all {s.buckets[0].low:g})")
            continue
        density = np.array([b.count for b in s.buckets]) / total / widths
        axes.stairs(
            density,
            edges,
            color=color,
            linestyle="--" if s.dashed else "-",
            linewidth=1.6,
            fill=not s.dashed,
            alpha=0.35 if not s.dashed else 1.0,
        )
        axes.plot([], [], color=color, linestyle="--" if s.dashed else "-", label=s.label)
    axes.set_title(title, fontsize=10)
    axes.set_ylabel("density", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return png_bytes(figure)


def thumbnail_png(
    pair_id: str, image: np.ndarray, mask: np.ndarray, rc: ReportConfig = DEFAULTS
) -> bytes:
    """RGB (B4, B3, B2, stretched as in the Trainer's figures) with the tailings mask outlined."""
    from matplotlib.figure import Figure

    from components.trainer_lib import to_display_rgb

    figure = Figure(figsize=(rc.thumbnail_inches, rc.thumbnail_inches), dpi=rc.dpi)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(to_display_rgb(image), interpolation="nearest")
    if mask.any() and not mask.all():
        axes.contour(mask.astype(float), levels=[0.5], colors=rc.mask_outline_color, linewidths=1.2)
    axes.set_title(f"{pair_id}  ({mask.mean():.0%} tailings)", fontsize=8)
    axes.axis("off")
    return png_bytes(figure)


def trial_scores_png(
    trials: list[tuple[int, float | None]], objective: str, rc: ReportConfig = DEFAULTS
) -> bytes:
    """A search's score by trial (trial number, score; None for a trial that did not
    complete, drawn as an x on the axis) with the best score so far as a step line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=rc.histogram_inches, dpi=rc.dpi)
    axes = figure.add_subplot(1, 1, 1)
    done = [(n, s) for n, s in trials if s is not None]
    if done:
        numbers, scores = zip(*done, strict=True)
        axes.plot(numbers, scores, "o", color="C0", label="trial")
        axes.step(
            numbers, np.maximum.accumulate(scores), where="post", color="C1", label="best so far"
        )
    failed = [n for n, s in trials if s is None]
    if failed:
        axes.plot(failed, [0.0] * len(failed), "x", color="C3", label="did not complete")
    axes.set_xlabel("trial", fontsize=8)
    axes.set_ylabel(objective, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return png_bytes(figure)
