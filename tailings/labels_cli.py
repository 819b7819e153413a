"""`tailings labels review`: rank the masks that disagree with the imagery, for a person to fix.

Registered in `tailings.cli.VERBS`. Arguments, the data folder, its labels.yaml and the output
paths are checked before TensorFlow loads; the review itself is `pipeline.label_review`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tailings.common import EXIT_OK, CliError, check_writable, config_from_flags, say
from tailings.pipeline_args import check_trainer_settings


def add_labels(sub) -> None:
    from components.config import PRESETS
    from pipeline.config import LabelReviewConfig

    d = LabelReviewConfig()
    p = sub.add_parser("labels", help="label review: find masks that disagree with the imagery")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    review = actions.add_parser(
        "review",
        help="train K fold models, score every mask with cleanlab, rank the suspicious ones",
        description=(
            "Train one model per fold on the other folds' pairs (the Trainer's own code and "
            "preset), predict every pair out of fold, and let cleanlab flag the pixels whose "
            "label the models confidently contradict and score each tile (lower = more likely "
            "mislabelled). Writes ranking.csv (worst first), flagged/flagged_<id>.tif (on the "
            "tile's grid: 1 labelled tailings that looks like background, 2 the reverse), "
            "review.html, review.json, and with --write-exclusions a labels.proposed.yaml to "
            "confirm and copy next to img/ and mask/ (tailings run then leaves those pairs out). "
            "Folds already trained with the same data, config and --folds are reused. "
            "Exit codes: 0 done; 1 bad input or the review failed; 2 usage errors."
        ),
    )
    review.add_argument(
        "--data",
        type=Path,
        default=d.data_dir,
        help="folder with img/ and mask/ (default: %(default)s)",
    )
    review.add_argument(
        "--folds", type=int, default=d.folds, help="fold models to train (default: %(default)s)"
    )
    review.add_argument("--preset", choices=sorted(PRESETS), default=d.preset, help="model preset")
    review.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    review.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PART.FIELD=VALUE",
        help="change one Trainer setting of the preset, as in `tailings run` (repeatable)",
    )
    review.add_argument(
        "--out", type=Path, default=d.out_dir, help="output folder (default: %(default)s)"
    )
    review.add_argument(
        "--html", type=Path, default=None, metavar="FILE", help="page (default: OUT/review.html)"
    )
    review.add_argument(
        "--write-exclusions",
        type=int,
        default=0,
        metavar="N",
        help="propose the N worst tiles as `exclude` entries in OUT/labels.proposed.yaml, "
        "after the decisions already in DATA/labels.yaml",
    )
    review.set_defaults(func=_review)


def _review(args: argparse.Namespace, beam_args: list[str]) -> int:
    from data.labels import labels_path, read_labels
    from data.pairs import discover_pairs
    from pipeline.config import LabelReviewConfig

    for sub in ("img", "mask"):
        if not (args.data / sub).is_dir():
            raise CliError(f"--data {args.data}: no {sub}/ folder (expected img/ and mask/)")
    cfg = config_from_flags(
        LabelReviewConfig,
        data_dir=args.data,
        out_dir=args.out,
        html=args.html,
        folds=args.folds,
        preset=args.preset,
        epochs=args.epochs,
        overrides=tuple(args.overrides),
        write_exclusions=args.write_exclusions,
    )
    check_trainer_settings(cfg)
    specs = discover_pairs(args.data / "img", args.data / "mask")
    if len(specs) < cfg.folds:
        raise CliError(f"--data {args.data}: {len(specs)} pairs are too few for {cfg.folds} folds")
    if labels_path(args.data).exists():  # a broken labels file is reported now, not at the end
        read_labels(labels_path(args.data), known_ids={s.pair_id for s in specs})
    check_writable(cfg.out_dir, "--out")  # before hours of training
    check_writable(cfg.html_path, "--html", is_file=True)

    from pipeline.label_review import (
        FLAGGED_DIR,
        PROPOSED_FILE,
        RANKING_FILE,
        run_review,
    )

    review = run_review(cfg, say)
    say(f"wrote {cfg.out_dir / RANKING_FILE}, {cfg.out_dir / FLAGGED_DIR}/, {cfg.html_path}")
    for rank, tile in enumerate(review.tiles[:10], start=1):
        print(
            f"{rank:3d}. {tile.pair_id:>8}  score {tile.score:.3f}  flagged "
            f"{tile.flagged_share:6.1%}  labelled {tile.labelled_share:6.1%}  predicted "
            f"{tile.predicted_share:6.1%}"
        )
    if cfg.write_exclusions:
        say(
            f"proposed exclusions: {cfg.out_dir / PROPOSED_FILE}; check each tile by eye, "
            f"then copy the file to {labels_path(cfg.data_dir)}"
        )
    return EXIT_OK
