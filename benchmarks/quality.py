"""Model quality, honestly: k-fold cross-validation inside the train split, then the eval split.

    .venv/bin/python benchmarks/quality.py [--data DIR] [--preset cpu] [--folds 4] [--only eval]

The pipeline blesses on the scene split of its few eval sites, and its early stopping watches
the eval split, so tuning against them overfits a handful of places. This script measures how
the Trainer's recipe generalises instead:

- the train split (as the pipeline splits it: `SplitConfig` + `ShardPlan`, by site) is cut into
  `--folds` folds by site (`cross_validation.folds_of`: no fold trains on ground another
  scores); each fold is predicted by a model trained on the others, so every train tile gets
  an out-of-fold prediction;
- each held-out fold's sites are also predicted as the pipeline's Evaluator scores the eval
  sites: each site merged onto one grid and predicted whole, windows blended as `tailings
  predict` blends them (`blending.blend_scene`), scored against the site label with facilities
  counted per whole site; and, for comparison, cut into the scene split's windows, each
  scored alone. The blended sites' out-of-fold score is what a recipe change (and
  `ModelConfig.decision_threshold`: every threshold is scored) should be judged on;
- finally (unless `--only cv`) one model trains on the whole train split and is scored on the
  eval split and on the pipeline's scene split windows (built here from the same eval tiles).

Training is the Trainer's own code fed from memory (`components.cross_validation`, shared with
`tailings labels review`); pairs the data's `labels.yaml` excludes are left out, as ExampleGen
leaves them out. Results go to benchmarks/results/quality.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _env import DEFAULT_DATA, RESULTS  # sets the environment first

from components import cross_validation
from components.cross_validation import Split, folds_of, load_splits, scene_windows, subset
from schemas.features import MASK_NODATA

DEFAULT_OUT = RESULTS / "quality.json"

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))


def load(data: Path) -> tuple[Split, Split]:
    """The pairs the pipeline would train and evaluate on, without the pairs the data's
    reviewed labels file excludes (as ExampleGen leaves them out)."""
    from data.labels import load_exclusions

    return load_splits(data, load_exclusions(data))


def train_and_predict(  # noqa: ANN201
    train: Split,
    held_out: Split,
    config,  # noqa: ANN001
    scene: Split | None = None,
    sites=(),  # noqa: ANN001
):
    """`cross_validation.train_and_predict` as this script reads it: (held-out probabilities by
    test-time augmentation mode, seconds, epochs, scene probabilities or None, blended
    probabilities of the merged `sites` by site id)."""
    fold = cross_validation.train_and_predict(train, held_out, config, scene, sites=sites)
    return fold.held_out, fold.seconds, fold.epochs, fold.scene, fold.sites


def site_scores(blended: list[tuple]) -> dict[str, dict[str, float]]:
    """Scores of whole blended sites at every threshold in THRESHOLDS: pixel metrics pooled
    over the sites' pixels with data, and facility recall and precision counted per whole site
    (`facility_metrics.analyse_tile` on each site's raster with its geodesic pixel areas;
    the scene Evaluator counts per window, which cuts a facility at window edges).
    `blended`: (site raster, [H, W] probabilities) pairs."""
    from affine import Affine
    from rasterio.crs import CRS

    from components.facility_metrics import analyse_tile
    from data.geo import pixel_areas

    probabilities = np.concatenate([p.ravel() for _, p in blended])
    labels = np.concatenate([site.label.ravel() for site, _ in blended])  # 0/1/MASK_NODATA
    areas = [
        pixel_areas(Affine(*site.transform), CRS.from_wkt(site.crs_wkt), *site.label.shape)
        for site, _ in blended
    ]
    out = {}
    for t in THRESHOLDS:
        pixels = cross_validation.pixel_scores(probabilities, labels, t)
        found = labelled = confirmed = predicted = 0
        for (site, p), m2 in zip(blended, areas, strict=True):
            a = analyse_tile(
                site.label, p, threshold=t, pixel_m2=np.broadcast_to(m2, p.shape), regions=True
            )
            found += a.found_facilities
            labelled += a.labelled_facilities
            confirmed += a.confirmed_regions
            predicted += a.predicted_regions
        pixels["facility_recall"] = found / max(labelled, 1)
        pixels["facility_precision"] = confirmed / max(predicted, 1)
        pixels["facilities"] = labelled
        pixels["predicted_regions"] = predicted
        out[f"{t:.2f}"] = pixels
    return out


def scores(probabilities: np.ndarray, masks: np.ndarray) -> dict[str, dict[str, float]]:
    """Pooled pixel metrics at every threshold in THRESHOLDS (as TFMA pools the eval split)."""
    return {f"{t:.2f}": cross_validation.pixel_scores(probabilities, masks, t) for t in THRESHOLDS}


def markdown(result: dict) -> str:
    """The summary table of results/quality.md."""

    def row(name: str, by_threshold: dict, threshold: str) -> str:
        m = by_threshold[threshold]
        return (
            f"| {name} | {threshold} | {m['iou']:.3f} | {m['f1']:.3f} | {m['pixel_accuracy']:.3f} |"
        )

    lines = [
        f"# Model quality: preset `{result['preset']}`",
        "",
        f"Made by `benchmarks/quality.py` on {result['date']} ({result['machine']['cpus']} CPUs).",
        "Pooled over all pixels of the predicted pairs, as TFMA pools the eval split.",
        "",
    ]
    if result.get("set"):
        lines += ["Preset changed with: " + " ".join(f"`--set {a}`" for a in result["set"]), ""]
    if result.get("epochs_override"):
        lines += [f"Epochs: {result['epochs_override']} (`--epochs`)", ""]
    lines += [
        "| predicted pairs | threshold | IoU | F1 | pixel accuracy |",
        "|---|---|---|---|---|",
    ]
    best = None
    if "cross_validation" in result:
        best = f"{result['cross_validation']['best_threshold']:.2f}"
        for fold in result["folds"]:
            name = f"train fold {fold['fold']} ({fold['pairs']} pairs, {fold['epochs']} epochs)"
            lines.append(row(name, fold["scores"], "0.50"))
        pooled = result["cross_validation"]["pooled"]
        lines.append(row("**all train pairs, out of fold**", pooled, "0.50"))
        lines.append(row("all train pairs, out of fold (best threshold)", pooled, best))
        for mode, by_threshold in (
            result["cross_validation"].get("test_time_augmentation", {}).items()
        ):
            if by_threshold != pooled:
                lines.append(
                    row(f"all train pairs, out of fold, TTA `{mode}`", by_threshold, "0.50")
                )
        background = result["cross_validation"].get("all_background_accuracy")
        if background is not None:
            lines.append(
                f"| all train pairs: all-background baseline | - | 0 | 0 | {background:.3f} |"
            )
        cv = result["cross_validation"]
        if "scene" in cv:
            for fold in result["folds"]:
                if "scene_scores" in fold:
                    name = f"train fold {fold['fold']} as scene windows ({fold['scene_windows']})"
                    lines.append(row(name, fold["scene_scores"], "0.50"))
            name = f"**train pairs as scene windows, out of fold ({cv['scene_windows']} windows)**"
            lines.append(row(name, cv["scene"], "0.50"))
            scene_best = max(cv["scene"], key=lambda t: cv["scene"][t]["iou"])
            lines.append(
                row("scene windows, out of fold (best threshold)", cv["scene"], scene_best)
            )
            lines.append(
                "| scene windows: all-background baseline | - | 0 | 0 | "
                f"{cv['scene_all_background_accuracy']:.3f} |"
            )
    if "eval_split" in result:
        ev = result["eval_split"]
        name = f"eval split ({ev['pairs']} pairs, {ev['epochs']} epochs)"
        lines.append(row(f"**{name}**", ev["scores"], "0.50"))
        if best and best != "0.50":
            lines.append(row(f"{name}, CV's best threshold", ev["scores"], best))
        for mode, by_threshold in ev.get("test_time_augmentation", {}).items():
            if by_threshold != ev["scores"]:
                lines.append(row(f"{name}, TTA `{mode}`", by_threshold, "0.50"))
        background = ev["all_background_accuracy"]
        lines.append(f"| eval split: all-background baseline | - | 0 | 0 | {background:.3f} |")
    if "scene_split" in result:
        sc = result["scene_split"]
        lines.append(row(f"**scene split ({sc['windows']} windows)**", sc["scores"], "0.50"))
        background = sc["all_background_accuracy"]
        lines.append(f"| scene split: all-background baseline | - | 0 | 0 | {background:.3f} |")
    cv = result.get("cross_validation", {})
    if "blended_sites" in cv:
        lines += [
            "",
            f"## Held-out sites whole, blended ({cv['sites']} sites, out of fold by site)",
            "",
            "Each held-out site merged onto one grid (its tiles' union as the label) and "
            "predicted as `tailings predict` predicts a scene (windows blended, overlap 128); "
            "facilities counted per whole site. All-background pixel accuracy "
            f"{cv['sites_all_background_accuracy']:.4f}.",
            "",
            "| predicted | threshold | IoU | pixel accuracy | facility recall | "
            "facility precision | facilities / predicted regions |",
            "|---|---|---|---|---|---|---|",
        ]

        def site_row(name: str, m: dict, threshold: str) -> str:
            return (
                f"| {name} | {threshold} | {m['iou']:.3f} | {m['pixel_accuracy']:.4f} | "
                f"{m['facility_recall']:.2f} | {m['facility_precision']:.2f} | "
                f"{m['facilities']} / {m['predicted_regions']} |"
            )

        for fold in result["folds"]:
            if "blended_site_scores" in fold:
                for t in ("0.50", "0.70"):
                    name = f"fold {fold['fold']} ({fold['sites']} sites)"
                    lines.append(site_row(name, fold["blended_site_scores"][t], t))
        for t in cv["blended_sites"]:
            lines.append(site_row("**all held-out sites**", cv["blended_sites"][t], t))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's")
    parser.add_argument("--only", choices=("cv", "eval"), default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PART.FIELD=VALUE",
        help="change one field of the preset, as `tailings run --set`: model.base_width=24",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--save-predictions",
        type=Path,
        default=None,
        metavar="NPZ",
        help="also write the out-of-fold probabilities (float16, per test-time augmentation "
        "mode), masks and pair ids, to study post-processing without retraining",
    )
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite the .md from the existing --out"
    )
    args = parser.parse_args(argv)
    if args.markdown_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.read_text())))
        return 0

    from components.config import PRESETS, with_overrides

    config = PRESETS[args.preset]
    try:
        config = with_overrides(config, args.set)
    except ValueError as err:
        parser.error(f"--set {err}")
    if args.epochs:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, epochs=args.epochs)
        )
    # Raw probabilities: the threshold is what this script chooses.
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, decision_threshold=0.5)
    )
    train, evaluation = load(args.data)
    print(f"{len(train.ids)} train pairs, {len(evaluation.ids)} eval pairs")
    try:  # fail now, not deep inside Keras
        config.check_tile_size(train.images.shape[1])
    except ValueError as err:
        parser.error(str(err))
    result: dict = {
        "preset": args.preset,
        "trainer_config": config.to_custom_config(),
        "epochs_override": args.epochs,
        "set": args.set,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "thresholds": list(THRESHOLDS),
    }
    own = config.model.test_time_augmentation  # what the exported model would serve
    if args.only != "eval":
        folds = folds_of(train, args.folds)
        out_of_fold: dict[str, np.ndarray] = {}
        scene_probabilities, scene_masks = [], []
        blended: list[tuple] = []  # (merged held-out site, its blended probabilities)
        result["folds"] = []
        for k in range(args.folds):
            held = folds == k
            # The held-out fold's tiles also as the scene split is made of eval tiles.
            scene = scene_windows(subset(train, held))
            # ... and each held-out site whole, predicted as `tailings predict` predicts a scene.
            sites = cross_validation.merged_sites(subset(train, held))
            by_mode, seconds, epochs, on_scene, on_sites = train_and_predict(
                subset(train, ~held), subset(train, held), config, scene, sites
            )
            fold_blended = [(site, on_sites[site.site_id]) for site in sites]
            blended += fold_blended
            for mode, probabilities in by_mode.items():
                out_of_fold.setdefault(mode, np.zeros_like(train.masks))[held] = probabilities
            scene_probabilities.append(on_scene[own])
            scene_masks.append(scene.masks)
            fold_scores = scores(by_mode[own], train.masks[held])
            fold_scene = scores(on_scene[own], scene.masks)
            fold_sites = site_scores(fold_blended)
            result["folds"].append(
                {
                    "fold": k,
                    "pairs": int(held.sum()),
                    "seconds": round(seconds),
                    "epochs": epochs,
                    "scores": fold_scores,
                    "scene_windows": len(scene.ids),
                    "scene_scores": fold_scene,
                    "sites": len(sites),
                    "blended_site_scores": fold_sites,
                }
            )
            fold_tta = {m: scores(p, train.masks[held])["0.50"]["iou"] for m, p in by_mode.items()}
            print(
                f"fold {k}: {held.sum()} pairs, IoU@0.5 {fold_scores['0.50']['iou']:.3f} "
                f"(by test-time augmentation: {json.dumps(fold_tta)}); {len(scene.ids)} scene "
                f"windows IoU@0.5 {fold_scene['0.50']['iou']:.3f}; {len(sites)} sites blended "
                f"IoU@0.5 {fold_sites['0.50']['iou']:.3f}; {seconds:.0f} s, "
                f"{epochs} epochs",
                flush=True,
            )
        if args.save_predictions:
            args.save_predictions.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(
                args.save_predictions,
                ids=np.array(train.ids),
                masks=train.masks.astype(np.uint8),
                **{mode: p.astype(np.float16) for mode, p in out_of_fold.items()},
            )
            sites_path = args.save_predictions.with_name(args.save_predictions.stem + "_sites.npz")
            np.savez_compressed(
                sites_path,
                **{f"{site.site_id}/probabilities": p.astype(np.float16) for site, p in blended},
                **{f"{site.site_id}/label": site.label for site, _ in blended},
            )
        by_tta = {mode: scores(p, train.masks) for mode, p in out_of_fold.items()}
        pooled = by_tta[own]
        best = max(pooled, key=lambda t: pooled[t]["iou"])
        all_scene_masks = np.concatenate(scene_masks)
        scene_valid = all_scene_masks != MASK_NODATA
        result["cross_validation"] = {
            "pooled": pooled,
            "best_threshold": float(best),
            "all_background_accuracy": float(np.mean(train.masks < 0.5)),
            "test_time_augmentation": by_tta,
            "scene": scores(np.concatenate(scene_probabilities), all_scene_masks),
            "scene_windows": int(len(all_scene_masks)),
            "scene_all_background_accuracy": float(
                np.sum((all_scene_masks < 0.5) & scene_valid) / scene_valid.sum()
            ),
            "blended_sites": site_scores(blended),
            "sites": len(blended),
            "sites_all_background_accuracy": float(
                sum(np.sum(site.label == 0) for site, _ in blended)
                / sum(np.sum(site.label != MASK_NODATA) for site, _ in blended)
            ),
        }
        cv_scene = result["cross_validation"]["scene"]["0.50"]
        print(
            f"out-of-fold scene windows: IoU {cv_scene['iou']:.3f}, pixel accuracy "
            f"{cv_scene['pixel_accuracy']:.3f} (all-background "
            f"{result['cross_validation']['scene_all_background_accuracy']:.3f})"
        )
        cv_sites = result["cross_validation"]["blended_sites"]
        print(
            f"out-of-fold blended sites ({len(blended)}): IoU {cv_sites['0.50']['iou']:.3f}, "
            f"pixel accuracy {cv_sites['0.50']['pixel_accuracy']:.4f} (all-background "
            f"{result['cross_validation']['sites_all_background_accuracy']:.4f}), facility "
            f"recall {cv_sites['0.50']['facility_recall']:.2f} precision "
            f"{cv_sites['0.50']['facility_precision']:.2f} at 0.5"
        )
        print(
            f"out-of-fold IoU: {pooled['0.50']['iou']:.3f} at 0.5, "
            f"{pooled[best]['iou']:.3f} at the best threshold {best}; by test-time "
            "augmentation: " + ", ".join(f"{m} {v['0.50']['iou']:.3f}" for m, v in by_tta.items())
        )
    if args.only != "cv":
        scene = scene_windows(evaluation)  # the pipeline's scene split
        by_mode, seconds, epochs, on_scene, _ = train_and_predict(train, evaluation, config, scene)
        scene_valid = scene.masks != MASK_NODATA
        result["scene_split"] = {
            "windows": len(scene.ids),
            "scores": scores(on_scene[own], scene.masks),
            "all_background_accuracy": float(
                np.sum((scene.masks < 0.5) & scene_valid) / scene_valid.sum()
            ),
        }
        print(
            f"scene split ({len(scene.ids)} windows) IoU@0.5: "
            f"{result['scene_split']['scores']['0.50']['iou']:.3f}",
            flush=True,
        )
        result["eval_split"] = {
            "pairs": len(evaluation.ids),
            "seconds": round(seconds),
            "epochs": epochs,
            "all_background_accuracy": float(np.mean(evaluation.masks < 0.5)),
            "scores": scores(by_mode[own], evaluation.masks),
            "test_time_augmentation": {
                mode: scores(p, evaluation.masks) for mode, p in by_mode.items()
            },
        }
        print(
            f"eval split IoU@0.5: {result['eval_split']['scores']['0.50']['iou']:.3f}; by "
            "test-time augmentation: "
            + ", ".join(
                f"{m} {v['0.50']['iou']:.3f}"
                for m, v in result["eval_split"]["test_time_augmentation"].items()
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
