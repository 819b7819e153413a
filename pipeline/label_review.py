"""Label review: find the masks that disagree with the imagery (`tailings labels review`).

K models are trained on K folds of every good pair with the Trainer's own code
(`components.cross_validation`, the preset and `--set` changes of `tailings run`); each pair is
predicted by the model that did not see it. cleanlab then compares the masks with these
out-of-fold probabilities (`cleanlab.segmentation`): `filter.find_label_issues` marks the pixels
whose label the models confidently contradict (confident learning, with per-class thresholds
estimated over all pixels), and `rank.get_label_quality_scores` gives each tile one score
(`num_pixel_issues`: 1 - its share of flagged pixels; lower = more likely mislabelled; see
SCORE_METHOD for why not cleanlab's default).

What cleanlab does not do, and this module does by hand: cutting folds and caching each fold's
predictions (resumable runs), splitting the flagged pixels by direction (labelled tailings the
models call background, or the reverse), and writing what a person reviews: `ranking.csv`,
per-tile GeoTIFFs of flagged pixels on the tile's own grid (open next to the mask in QGIS), one
offline HTML page, and a proposed exclusions file (`data.labels`) to confirm.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.cross_validation import Split, folds_of, stack, subset
from data.errors import TailingsError
from pipeline.config import LabelReviewConfig

RANKING_FILE = "ranking.csv"
RANKING_COLUMNS = (
    "pair_id",
    "score",
    "flagged_share",
    "labelled_share",
    "predicted_share",
    "softmin_score",
    "flagged_labelled_tailings_share",
    "flagged_labelled_background_share",
    "fold",
)
FLAGGED_DIR = "flagged"
FOLDS_DIR = "folds"
PROPOSED_FILE = "labels.proposed.yaml"
SUMMARY_FILE = "review.json"

# Codes of the flagged-pixel GeoTIFFs (uint8, with a colour table).
AGREES = 0
FLAGGED_LABELLED_TAILINGS = 1  # the mask says tailings, the models confidently say background
FLAGGED_LABELLED_BACKGROUND = 2  # the mask says background, the models confidently say tailings
FLAG_COLOURS = {
    AGREES: (0, 0, 0, 0),
    FLAGGED_LABELLED_TAILINGS: (0, 200, 255, 255),  # cyan, as false negatives in the run report
    FLAGGED_LABELLED_BACKGROUND: (255, 0, 255, 255),  # magenta, as false positives
}
# cleanlab's per-image score: "num_pixel_issues" = 1 - the share of the tile's pixels that
# find_label_issues flags. Its default, "softmin", follows the few most confidently contradicted
# pixels, which every hand-drawn outline has along its border: on synthetic tiles with planted
# errors (tests/pipeline/test_label_review.py) softmin ranked a mask with an extra square 5th,
# behind clean tiles; the share of flagged pixels ranks it 3rd, after the other two planted ones.
# softmin is kept as a second column of ranking.csv.
SCORE_METHOD = "num_pixel_issues"


class LabelReviewError(TailingsError, RuntimeError):
    """A problem with the whole review (no data, too few pairs), not with one pair."""


@dataclasses.dataclass
class OutOfFold:
    """Each tile's probability of tailings from the fold model that did not train on it."""

    probabilities: np.ndarray  # [N,H,W] float32, the model's own test-time augmentation mode
    folds: np.ndarray  # [N] fold of each tile
    epochs: list[int]
    seconds: list[float]
    reused: list[bool]
    scene_probabilities: list[np.ndarray]  # per fold [M,H,W] (when scenes were asked for)
    scene_masks: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class TileReview:
    pair_id: str
    score: float
    flagged_share: float
    labelled_share: float
    predicted_share: float
    softmin_score: float
    flagged_labelled_tailings_share: float
    flagged_labelled_background_share: float
    fold: int

    def row(self) -> list[object]:
        return [
            self.pair_id,
            f"{self.score:.6f}",
            *(
                f"{v:.6f}"
                for v in (
                    self.flagged_share,
                    self.labelled_share,
                    self.predicted_share,
                    self.softmin_score,
                    self.flagged_labelled_tailings_share,
                    self.flagged_labelled_background_share,
                )
            ),
            self.fold,
        ]


@dataclasses.dataclass
class Review:
    tiles: list[TileReview]  # worst (lowest score) first
    split: Split  # the reviewed pairs, in data order
    out_of_fold: OutOfFold
    flags: np.ndarray  # [N,H,W] uint8 codes, data order
    seconds: float


# --------------------------------------------------------------------------- out of fold
def tile_digests(split: Split) -> dict[str, str]:
    """A digest of each tile's pixels and mask: the cache key's notion of "the same data"."""
    return {
        pair_id: hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()
        for pair_id, image, mask in zip(split.ids, split.images, split.masks, strict=True)
    }


def fold_key(
    digests: dict[str, str],
    held: Sequence[str],
    trained: Sequence[str],
    config: Any,
    folds: int,
    k: int,
    scene: str,
) -> str:
    """What a fold's predictions depend on: the data of both parts, the Trainer config, the
    fold (k of K) and what scene windows were predicted."""
    h = hashlib.sha256()
    h.update(json.dumps(config.to_custom_config(), sort_keys=True).encode())
    h.update(f"fold {k} of {folds}; scene {scene}\n".encode())
    for part, ids in (("held", held), ("trained", trained)):
        for pair_id in sorted(ids):
            h.update(f"{part} {pair_id} {digests[pair_id]}\n".encode())
    return h.hexdigest()


def out_of_fold(
    tiles: Split,
    config: Any,  # components.config.TrainerConfig
    folds: int,
    cache_dir: Path | None,
    say: Callable[[str], None] = lambda _m: None,
    train_excluded: frozenset[str] = frozenset(),
    scene_of: Callable[[Split], Split] | None = None,
    scene_name: str = "",
) -> OutOfFold:
    """Train one model per fold on the other folds' tiles (minus `train_excluded`) and predict
    every tile of the fold, and `scene_of(held-out fold)` windows if given. A fold whose
    predictions are in `cache_dir` under the same key is not trained again."""
    from components import cross_validation, progress

    mode = config.model.test_time_augmentation
    fold = folds_of(tiles, folds)
    digests = tile_digests(tiles)
    probabilities = np.zeros(tiles.masks.shape[:3], np.float32)
    result = OutOfFold(probabilities, fold, [], [], [], [], [])
    started = time.monotonic()
    trained_seconds: list[float] = []

    def part(k: int) -> tuple[np.ndarray, np.ndarray]:
        held = fold == k
        trained = ~held & np.array([i not in train_excluded for i in tiles.ids])
        return held, trained

    def path_of(k: int) -> Path | None:
        return cache_dir / f"fold-{k + 1}-of-{folds}.npz" if cache_dir else None

    def cached(k: int) -> dict | None:
        held, trained = part(k)
        key = fold_key(
            digests,
            [i for i, h in zip(tiles.ids, held, strict=True) if h],
            [i for i, t in zip(tiles.ids, trained, strict=True) if t],
            config,
            folds,
            k,
            scene_name,
        )
        path = path_of(k)
        if path is None or not path.exists():
            return {"key": key, "hit": False}
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return {"key": key, "hit": False}
            return {"key": key, "hit": True, **{name: npz[name] for name in npz.files}}

    hits = {k: cached(k) for k in range(folds)}

    def remaining(k: int) -> Callable[[float], float]:
        def left(fold_at_this_pace: float) -> float:
            to_train = sum(1 for j in range(k + 1, folds) if not hits[j]["hit"])
            per_fold = np.mean(trained_seconds) if trained_seconds else fold_at_this_pace
            return float(per_fold * to_train)

        return left

    for k in range(folds):
        held, trained = part(k)
        if not held.any():
            raise LabelReviewError(f"fold {k + 1} of {folds} is empty: use fewer --folds")
        hit = hits[k]
        label = f"fold {k + 1} of {folds}"
        if hit["hit"]:
            say(f"{label}: {held.sum()} pairs, reusing {path_of(k)} (same data, config, folds)")
            probabilities[held] = hit["probabilities"].astype(np.float32)
            result.epochs.append(int(hit["epochs"]))
            result.seconds.append(float(hit["seconds"]))
            result.reused.append(True)
            if scene_of is not None:
                result.scene_probabilities.append(hit["scene_probabilities"].astype(np.float32))
                result.scene_masks.append(hit["scene_masks"])
            continue
        say(f"{label}: training on {trained.sum()} pairs, predicting {held.sum()}")
        held_split = subset(tiles, held)
        scene = scene_of(held_split) if scene_of is not None else None
        epoch_lines = progress.epoch_progress(
            label, config.train.epochs, say=say, metric="loss", remaining_after=remaining(k)
        )
        fold_result = cross_validation.train_and_predict(
            subset(tiles, trained), held_split, config, scene, callbacks=[epoch_lines]
        )
        trained_seconds.append(fold_result.seconds)
        # Cached as float16: round now too, so a resumed review scores exactly the same numbers.
        fold_probabilities = fold_result.held_out[mode][..., 0].astype(np.float16)
        fold_probabilities = fold_probabilities.astype(np.float32)
        probabilities[held] = fold_probabilities
        result.epochs.append(fold_result.epochs)
        result.seconds.append(fold_result.seconds)
        result.reused.append(False)
        extra = {}
        if scene is not None:
            scene_probabilities = fold_result.scene[mode][..., 0].astype(np.float16)
            scene_probabilities = scene_probabilities.astype(np.float32)
            result.scene_probabilities.append(scene_probabilities)
            result.scene_masks.append(scene.masks[..., 0].astype(np.uint8))
            extra = {
                "scene_probabilities": scene_probabilities.astype(np.float16),
                "scene_masks": scene.masks[..., 0].astype(np.uint8),
            }
        path = path_of(k)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(path.name + ".tmp.npz")
            np.savez_compressed(
                temp,
                key=np.array(hit["key"]),
                ids=np.array(held_split.ids),
                probabilities=fold_probabilities.astype(np.float16),
                epochs=np.array(fold_result.epochs),
                seconds=np.array(fold_result.seconds),
                **extra,
            )
            os.replace(temp, path)
        say(
            f"{label}: done in {fold_result.seconds:.0f} s ({fold_result.epochs} epochs); "
            f"{time.monotonic() - started:.0f} s so far"
        )
    return result


# --------------------------------------------------------------------------- cleanlab
@dataclasses.dataclass
class LabelScores:
    score: np.ndarray  # [N] cleanlab's SCORE_METHOD score, lower = more likely mislabelled
    softmin: np.ndarray  # [N] cleanlab's softmin score
    issues: np.ndarray  # [N,H,W] bool, cleanlab's per-pixel label issues


def score_labels(masks: np.ndarray, probabilities: np.ndarray, downsample: int = 1) -> LabelScores:
    """cleanlab's per-tile label quality and per-pixel label issues.

    masks [N,H,W] 0/1, probabilities [N,H,W] of tailings. cleanlab wants one probability per
    class, [N,K,H,W]: background 1 - p and tailings p.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    labels = masks.astype(np.int64)
    p = np.clip(probabilities.astype(np.float32), 1e-6, 1 - 1e-6)
    pred_probs = np.stack([1.0 - p, p], axis=1)
    issues = find_label_issues(labels, pred_probs, downsample=downsample, n_jobs=1, verbose=False)
    issues = np.asarray(issues, bool)
    # SCORE_METHOD, "num_pixel_issues", is cleanlab's `1 - mean(find_label_issues(...))` per
    # image (cleanlab/segmentation/rank.py); taken from the issues above instead of asking
    # get_label_quality_scores, which would run find_label_issues a second time (15 s).
    score = 1.0 - issues.mean(axis=(1, 2))
    softmin, _ = get_label_quality_scores(labels, pred_probs, method="softmin", verbose=False)
    return LabelScores(score.astype(np.float64), np.asarray(softmin, np.float64), issues)


def flag_codes(masks: np.ndarray, issues: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W]: which way each flagged pixel's label disagrees (module constants)."""
    codes = np.full(masks.shape, AGREES, np.uint8)
    codes[issues & (masks == 1)] = FLAGGED_LABELLED_TAILINGS
    codes[issues & (masks == 0)] = FLAGGED_LABELLED_BACKGROUND
    return codes


def rank_tiles(
    split: Split,
    oof: OutOfFold,
    scores: LabelScores,
    codes: np.ndarray,
    threshold: float,
) -> list[TileReview]:
    masks = split.masks[..., 0]
    tiles = [
        TileReview(
            pair_id=pair_id,
            score=float(scores.score[i]),
            flagged_share=float(np.mean(codes[i] != AGREES)),
            labelled_share=float(np.mean(masks[i] == 1)),
            predicted_share=float(np.mean(oof.probabilities[i] >= threshold)),
            softmin_score=float(scores.softmin[i]),
            flagged_labelled_tailings_share=float(np.mean(codes[i] == FLAGGED_LABELLED_TAILINGS)),
            flagged_labelled_background_share=float(
                np.mean(codes[i] == FLAGGED_LABELLED_BACKGROUND)
            ),
            fold=int(oof.folds[i]),
        )
        for i, pair_id in enumerate(split.ids)
    ]
    return sorted(tiles, key=lambda t: (t.score, t.softmin_score, t.pair_id))


# --------------------------------------------------------------------------- outputs
def write_ranking(path: Path, tiles: Sequence[TileReview]) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(RANKING_COLUMNS)
        writer.writerows(t.row() for t in tiles)
    os.replace(temp, path)


def write_flagged(folder: Path, split: Split, codes: np.ndarray) -> list[Path]:
    """One GeoTIFF per tile (`flagged_<id>.tif`): the flag codes on the tile's own grid, with
    a colour table so GIS software shows them without styling."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for pair, tile_codes in zip(split.pairs, codes, strict=True):
        path = folder / f"flagged_{pair.pair_id}.tif"
        height, width = tile_codes.shape
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=1,
            dtype="uint8",
            crs=CRS.from_wkt(pair.crs_wkt),
            transform=Affine(*pair.transform),
            compress="deflate",
            nodata=AGREES,  # GeoTIFF colour tables have no alpha: agreeing pixels show through
        ) as dst:
            dst.write(tile_codes, 1)
            dst.write_colormap(1, FLAG_COLOURS)
            dst.set_band_description(
                1, "0 agrees; 1 labelled tailings, looks like background; 2 the reverse"
            )
        written.append(path)
    return written


def propose_exclusions(
    data_dir: Path, tiles: Sequence[TileReview], count: int, out: Path
) -> tuple[Path, int]:
    """The `count` worst tiles as `exclude` entries, after the data's own labels.yaml
    decisions (a person's decision wins), written to `out` for a person to confirm."""
    from data.labels import (
        EXCLUDE,
        LabelDecision,
        labels_path,
        merge_proposals,
        read_labels,
        write_labels,
    )

    existing_path = labels_path(data_dir)
    existing = read_labels(existing_path) if existing_path.exists() else {}
    proposals = [
        LabelDecision(
            t.pair_id,
            EXCLUDE,
            f"proposed by label review: score {t.score:.3f}, {t.flagged_share:.1%} of pixels "
            f"flagged ({t.labelled_share:.1%} labelled tailings, out-of-fold model predicts "
            f"{t.predicted_share:.1%}); confirm by eye",
        )
        for t in tiles[:count]
    ]
    merged = merge_proposals(existing, proposals)
    write_labels(
        out,
        merged,
        header=(
            "Proposed by `tailings labels review`: check each entry against the imagery, set\n"
            "`decision: keep` for a mask that is right, then copy this file to\n"
            f"{existing_path} (tailings run reads it from there)."
        ),
    )
    return out, sum(1 for d in merged if d.pair_id not in existing)


def tile_strip(
    image: np.ndarray, mask: np.ndarray, probability: np.ndarray, codes: np.ndarray, size: int = 200
) -> np.ndarray:
    """uint8 [h, 4w, 3]: RGB | mask (gold) | out-of-fold probability (white = 1) | flags (cyan:
    labelled tailings that looks like background, magenta: the reverse), `size` px a panel."""
    from components.trainer_lib import to_display_rgb
    from pipeline.reports.overlays import thumbnail

    rgb = to_display_rgb(image)
    panels = [
        rgb,
        _blend(rgb, mask == 1, (255, 215, 0)),
        np.repeat(probability[..., None], 3, axis=2),
        _blend(
            _blend(rgb, codes == FLAGGED_LABELLED_TAILINGS, FLAG_COLOURS[1][:3]),
            codes == FLAGGED_LABELLED_BACKGROUND,
            FLAG_COLOURS[2][:3],
        ),
    ]
    return np.concatenate(
        [np.pad(thumbnail((np.clip(p, 0, 1) * 255).astype(np.uint8), size), _GAP) for p in panels],
        axis=1,
    )


def jpeg_uri(image: np.ndarray, quality: int = 85) -> str:
    """A uint8 RGB image as a JPEG `data:` URI. The strips are photographs: as PNG the page for
    the 90 study tiles was 11.4 MB, as JPEG it is a few MB."""
    import io

    from PIL import Image

    from pipeline.reports.plots import data_uri

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return data_uri(buffer.getvalue(), "image/jpeg")


def review_html(review: Review, cfg: LabelReviewConfig, threshold: float) -> str:
    """One offline page: per tile, worst first, RGB | mask | out-of-fold prediction | flags."""
    from pipeline.reports import html

    index = {pair_id: i for i, pair_id in enumerate(review.split.ids)}
    rows = []
    for rank, tile in enumerate(review.tiles, start=1):
        i = index[tile.pair_id]
        strip = tile_strip(
            review.split.images[i],
            review.split.masks[i, ..., 0],
            review.out_of_fold.probabilities[i],
            review.flags[i],
        )
        caption = (
            f"#{rank} {tile.pair_id}: score {tile.score:.3f}, flagged {tile.flagged_share:.1%} "
            f"(cyan: labelled tailings, looks like background "
            f"{tile.flagged_labelled_tailings_share:.1%}; magenta: the reverse "
            f"{tile.flagged_labelled_background_share:.1%}), labelled {tile.labelled_share:.1%}, "
            f"predicted {tile.predicted_share:.1%} (fold {tile.fold + 1})"
        )
        rows.append(html.figure(jpeg_uri(strip), caption, alt=f"tile {tile.pair_id}"))
    table = html.table(
        ["rank", *RANKING_COLUMNS],
        ([rank, *t.row()] for rank, t in enumerate(review.tiles, start=1)),
        text_columns=(1,),
    )
    oof = review.out_of_fold
    body = [
        "<div class='cards'>"
        + html.card("pairs reviewed", len(review.tiles))
        + html.card("folds", cfg.folds)
        + html.card("flagged pixels", f"{np.mean(review.flags != AGREES):.1%}")
        + html.card(
            "training the fold models" + (" (reused)" if all(oof.reused) else ""),
            f"{sum(oof.seconds) / 60:.0f} min",
        )
        + html.card("this review", f"{review.seconds / 60:.1f} min")
        + "</div>",
        html.note(
            "Each tile was predicted by a model that did not train on it (fold models, the "
            f"Trainer's preset {cfg.preset!r}). cleanlab flags pixels whose label the models "
            "confidently contradict and scores each tile (1 - its share of flagged pixels: lower "
            "= more likely mislabelled). A flag is a question for a "
            "person, not a verdict: the models are trained on the same noisy masks. Panels: "
            "RGB (B4, B3, B2) | mask (gold) | out-of-fold probability of tailings (white = 1) | "
            f"flagged pixels. Predicted shares use the decision threshold {threshold}.",
            css="ok",
        ),
        html.section("Tiles, worst first", "<div class='grid'>" + "".join(rows) + "</div>"),
        html.section("Ranking", table),
        html.section(
            "Folds",
            html.table(
                ["fold", "pairs", "epochs", "seconds", "reused"],
                (
                    [k + 1, int(np.sum(oof.folds == k)), e, round(s), "yes" if r else "no"]
                    for k, (e, s, r) in enumerate(
                        zip(oof.epochs, oof.seconds, oof.reused, strict=True)
                    )
                ),
            ),
        ),
    ]
    return html.page(
        "Label review",
        f"{len(review.tiles)} pairs from {cfg.data_dir}, {cfg.folds} folds",
        body,
    )


_GAP = ((3, 3), (3, 3), (0, 0))


def _blend(rgb: np.ndarray, where: np.ndarray, colour: Sequence[int], alpha: float = 0.55):
    out = rgb.astype(np.float32).copy()
    out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colour, np.float32) / 255.0
    return out


# --------------------------------------------------------------------------- the command
def run_review(cfg: LabelReviewConfig, say: Callable[[str], None]) -> Review:
    """Train the fold models (or reuse them), score the labels, write every output."""
    from components.cross_validation import load_pairs

    started = time.monotonic()
    config = cfg.trainer()
    good, rejected = load_pairs(cfg.data_dir)
    for r in rejected:
        say(f"skipped {r.pair_id}: {r.reason} ({r.detail})")
    if len(good) < cfg.folds:
        raise LabelReviewError(
            f"{len(good)} good pairs under {cfg.data_dir} are too few for {cfg.folds} folds"
        )
    sizes = {p.image.shape[:2] for p in good}
    if len(sizes) > 1:
        raise LabelReviewError(f"pairs of different tile sizes {sorted(sizes)}: cannot stack")
    try:
        config.check_tile_size(good[0].image.shape[0])
    except ValueError as err:
        raise LabelReviewError(str(err)) from None
    split = stack(good)
    say(f"reviewing {len(good)} pairs with {cfg.folds} folds (preset {cfg.preset})")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    oof = out_of_fold(split, config, cfg.folds, cfg.out_dir / FOLDS_DIR, say)
    say("scoring labels with cleanlab")
    masks = split.masks[..., 0].astype(np.uint8)
    scores = score_labels(masks, oof.probabilities, cfg.downsample)
    codes = flag_codes(masks, scores.issues)
    threshold = config.model.decision_threshold
    tiles = rank_tiles(split, oof, scores, codes, threshold)
    review = Review(tiles, split, oof, codes, time.monotonic() - started)
    write_ranking(cfg.out_dir / RANKING_FILE, tiles)
    write_flagged(cfg.out_dir / FLAGGED_DIR, split, codes)
    html_path = cfg.html_path
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(review_html(review, cfg, threshold))
    summary = {
        "pairs": len(tiles),
        "folds": cfg.folds,
        "preset": cfg.preset,
        "epochs_override": cfg.epochs,
        "set": list(cfg.overrides),
        "trainer_config": config.to_custom_config(),
        "fold_epochs": oof.epochs,
        "fold_seconds": [round(s) for s in oof.seconds],
        "folds_reused": oof.reused,
        "seconds": round(review.seconds),
        "flagged_share": float(np.mean(codes != AGREES)),
        "decision_threshold": threshold,
        "skipped": [r.to_dict() for r in rejected],
    }
    if cfg.write_exclusions:
        path, added = propose_exclusions(
            cfg.data_dir, tiles, cfg.write_exclusions, cfg.out_dir / PROPOSED_FILE
        )
        summary["proposed_exclusions"] = {"file": str(path), "new_entries": added}
    (cfg.out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return review
