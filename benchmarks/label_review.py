"""Does leaving out the masks the label review excludes help? Out-of-fold IoU with and without.

    .venv/bin/python benchmarks/label_review.py --labels FILE [--data DIR] [--review DIR]

Both arms use the folds of `tailings labels review` (same fold of every pair, same preset):
- **with**: every good pair trains (the review's own fold models; their cached predictions in
  `--review`/folds are reused, so this arm costs nothing after a review);
- **without**: the pairs `--labels` excludes do not train, but are still predicted out of fold.

Each arm is scored (a) on all pairs and (b) on the kept pairs only, pooled over pixels at the
preset's decision threshold and at 0.5. Framing: whole study tiles, each predicted by a model
that did not train on it (centred on a facility; the scene split measures framing, this
measures labels). Results: benchmarks/results/label_review.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _env import DEFAULT_DATA, RESULTS  # sets the environment first

DEFAULT_OUT = RESULTS / "label_review.json"


def score(probabilities: np.ndarray, masks: np.ndarray, threshold: float) -> dict[str, float]:
    """`quality.scores` (pooled IoU, F1, pixel accuracy) at one threshold, with the
    all-background accuracy of the scored pixels beside it."""
    from quality import scores

    return {
        **scores(probabilities, masks)[f"{threshold:.2f}"],
        "all_background_accuracy": float(np.mean(masks != 1)),
    }


def draw_top(tiles, oof, config, top: int, path: Path) -> None:  # noqa: ANN001
    """The review's `top` worst tiles, one row each, as `tailings labels review` ranks them."""
    from matplotlib.figure import Figure

    from pipeline.label_review import flag_codes, rank_tiles, score_labels, tile_strip

    masks = tiles.masks[..., 0].astype(np.uint8)
    scores = score_labels(masks, oof.probabilities)
    codes = flag_codes(masks, scores.issues)
    ranked = rank_tiles(tiles, oof, scores, codes, config.model.decision_threshold)[:top]
    index = {pair_id: i for i, pair_id in enumerate(tiles.ids)}
    figure = Figure(figsize=(8, 2.2 * len(ranked) + 0.3), dpi=100)
    figure.text(
        0.5,
        1.0,
        "RGB | mask | out-of-fold probability | flagged (cyan: labelled tailings, magenta: "
        "labelled background)",
        ha="center",
        va="top",
        fontsize=9,
    )
    for row, tile in enumerate(ranked):
        i = index[tile.pair_id]
        axes = figure.add_subplot(len(ranked), 1, row + 1)
        axes.imshow(tile_strip(tiles.images[i], masks[i], oof.probabilities[i], codes[i], 160))
        axes.set_title(
            f"#{row + 1} img_{tile.pair_id}: score {tile.score:.3f}, labelled "
            f"{tile.labelled_share:.0%}, predicted {tile.predicted_share:.0%}",
            fontsize=9,
        )
        axes.axis("off")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.2 * len(ranked) + 0.3)))
    figure.savefig(path, **({"pil_kwargs": {"quality": 85}} if path.suffix == ".jpg" else {}))


def markdown(result: dict) -> str:
    lines = [
        "# Label review: out-of-fold quality with and without the excluded masks",
        "",
        f"Made by `benchmarks/label_review.py` on {result['date']} "
        f"({result['machine']['cpus']} CPUs); preset `{result['preset']}`, "
        f"{result['folds']} folds (the review's), {result['pairs']} pairs, "
        f"{len(result['excluded'])} excluded by `{result['labels']}`: "
        + ", ".join(f"`{i}`" for i in result["excluded"])
        + ".",
        "",
        "Framing: whole study tiles, each predicted by the fold model that did not train on it. "
        "Pooled over all pixels of the scored pairs.",
        "",
        "| trained on | scored on | threshold | IoU | F1 | pixel accuracy | all-background |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, name in (("with", "all pairs"), ("without", "pairs kept by the review")):
        for scored, label in (("all", "all pairs"), ("kept", "kept pairs")):
            for threshold, m in result["arms"][arm][scored].items():
                lines.append(
                    f"| {name} | {label} | {threshold} | {m['iou']:.3f} | {m['f1']:.3f} | "
                    f"{m['pixel_accuracy']:.3f} | {m['all_background_accuracy']:.3f} |"
                )
    lines += ["", "| arm | fold epochs | fold seconds | reused |", "|---|---|---|---|"]
    for arm in ("with", "without"):
        a = result["arms"][arm]
        lines.append(f"| {arm} | {a['epochs']} | {a['seconds']} | {a['reused']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labels", type=Path, required=True, help="reviewed labels.yaml")
    parser.add_argument(
        "--review", type=Path, required=True, help="the `tailings labels review --out` folder"
    )
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw the review's --top worst tiles (RGB | mask | out-of-fold | flags)",
    )
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)

    from components.cross_validation import load_pairs, stack
    from data.labels import exclusions, read_labels
    from pipeline.config import LabelReviewConfig
    from pipeline.label_review import FOLDS_DIR, out_of_fold
    from tailings.common import say

    good, _ = load_pairs(args.data)
    tiles = stack(good)
    excluded = exclusions(read_labels(args.labels, set(tiles.ids)))
    cfg = LabelReviewConfig(data_dir=args.data, out_dir=args.review, folds=args.folds)
    config = cfg.trainer()
    kept = np.array([i not in excluded for i in tiles.ids])
    masks = tiles.masks[..., 0]
    thresholds = sorted({0.5, config.model.decision_threshold})
    result: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "preset": cfg.preset,
        "folds": args.folds,
        "pairs": len(tiles.ids),
        "labels": str(args.labels),
        "excluded": sorted(excluded),
        "arms": {},
    }
    for arm, train_excluded, cache in (
        ("with", frozenset(), args.review / FOLDS_DIR),
        ("without", frozenset(excluded), args.review / f"{FOLDS_DIR}-without-excluded"),
    ):
        started = time.monotonic()
        oof = out_of_fold(tiles, config, args.folds, cache, say, train_excluded=train_excluded)
        result["arms"][arm] = {
            "all": {f"{t:.2f}": score(oof.probabilities, masks, t) for t in thresholds},
            "kept": {
                f"{t:.2f}": score(oof.probabilities[kept], masks[kept], t) for t in thresholds
            },
            "epochs": oof.epochs,
            "seconds": [round(s) for s in oof.seconds],
            "reused": oof.reused,
            "wall_seconds": round(time.monotonic() - started),
        }
        say(f"{arm}: " + json.dumps(result["arms"][arm]["all"]))
        if arm == "with" and args.figure:
            draw_top(tiles, oof, config, args.top, args.figure)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
