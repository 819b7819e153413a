"""Out-of-fold training with the Trainer's own code, fed from memory.

Shared by `tailings labels review` (out-of-fold probabilities for cleanlab) and
`benchmarks/quality.py` (how the recipe generalises): both train exactly as `run_fn` does
(`trainer_lib.compile_model`, `batch_pairs` with the mosaic windows and augmentation,
`fit_callbacks`, `finish_training`), but from pairs held in memory instead of Transform's
TFRecords, so K models can be trained on K folds without K pipeline runs. Normalisation is the
Transform's (per-band mean and std over the training part, `transform_lib.normalize`).

Early stopping watches the held-out part, as `run_fn` watches the eval split: it only chooses
when to stop (the cpu preset's patience is 12 of 40 epochs), but the held-out labels do
take part in that choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class Split:
    """Tiles in memory: ids, reflectance, masks and (for tiles) their GeoPairs."""

    ids: list[str]
    images: np.ndarray  # [N,H,W,3] reflectance
    masks: np.ndarray  # [N,H,W,1] float 0/1 (MASK_NODATA: no data, in scene windows)
    pairs: list = dataclasses.field(default_factory=list)  # the GeoPairs (tiles only)


def load_pairs(data: Path, excluded: Mapping[str, str] | None = None) -> tuple[list, list]:
    """The pairs under `data/img` and `data/mask` that conversion would accept (same
    validation), with their sites and site labels as conversion writes them (`data.sites`),
    and the rejected ones (`data.pairs.Rejection`; excluded pairs among them, with reason
    `excluded_by_review`, unread)."""
    from data.config import PairingConfig, ValidationConfig
    from data.pairs import GeoPair, discover_pairs, excluded_by_review, validate
    from data.sites import attach_sites, plan_sites

    excluded = excluded or {}
    good, rejected = [], []
    specs = discover_pairs(data / "img", data / "mask", PairingConfig())
    for spec in specs:
        if spec.pair_id in excluded:
            rejected.append(excluded_by_review(spec, excluded[spec.pair_id]))
            continue
        pair = validate(spec, ValidationConfig())
        (good if isinstance(pair, GeoPair) else rejected).append(pair)
    return attach_sites(good, plan_sites(specs).site_of), rejected


def load_splits(data: Path, excluded: Mapping[str, str] | None = None) -> tuple[Split, Split]:
    """The pairs the pipeline would train and evaluate on (same validation, same split)."""
    from data.config import SplitConfig
    from data.convert import ShardPlan

    split = SplitConfig()  # what PipelineConfig.split defaults to
    good, rejected = load_pairs(data, excluded)
    plan = ShardPlan(
        shards=split.shards, splits=split.splits, sites={p.pair_id: p.site for p in good}
    )
    for pair in rejected:
        print(f"skipped {pair.pair_id}: {pair.reason} ({pair.detail})")
    parts: dict[str, list] = {"train": [], "eval": []}
    for pair in good:
        parts[plan.key(pair.pair_id)[0]].append(pair)
    return stack(parts["train"]), stack(parts["eval"])


def stack(pairs: Sequence, labels: str = "site") -> Split:
    """Pairs as arrays; the masks are their site labels ("site") or their own ("own"), as
    `TrainConfig.labels` chooses."""
    return Split(
        [p.pair_id for p in pairs],
        np.stack([p.image for p in pairs]).astype(np.float32),
        np.stack([p.site_label if labels == "site" else p.mask for p in pairs])[..., None].astype(
            np.float32
        ),
        list(pairs),
    )


def subset(split: Split, keep: np.ndarray) -> Split:
    return Split(
        [i for i, k in zip(split.ids, keep, strict=True) if k],
        split.images[keep],
        split.masks[keep],
        [p for p, k in zip(split.pairs, keep, strict=True) if k] if split.pairs else [],
    )


def mosaic_plan(split: Split) -> tuple[list, dict]:
    """Mosaics of `split`'s tiles side by side (`data.scenes.plan_mosaics`; the framing
    `benchmarks/shift.py` measures window placement on), and the tiles by pair id."""
    from data.config import SceneConfig
    from data.scenes import plan_mosaics

    tiles = dict(zip(split.ids, split.pairs, strict=True))
    return plan_mosaics(split.ids, split.images.shape[1], SceneConfig()), tiles


def scene_windows(split: Split) -> Split:
    """The scene construction of `split`'s tiles, as ExampleGen builds the scene split from
    the eval sites (`data.scenes`): each site merged into one place, its union as the label,
    cut on a shifted grid."""
    from data.config import SceneConfig
    from data.scenes import plan_site_scenes
    from data.scenes import scene_windows as site_windows

    by_site: dict[str, list] = {}
    for pair in split.pairs:
        by_site.setdefault(pair.site, []).append(pair)
    size = split.images.shape[1]
    plan = plan_site_scenes(
        {site: [p.pair_id for p in tiles] for site, tiles in by_site.items()}, size, SceneConfig()
    )
    return stack(
        [window for scene in plan for window in site_windows(scene, by_site[scene.site_id], size)]
    )


def pixel_scores(probabilities: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    """Tailings IoU, F1 and pixel accuracy pooled over every pixel with data (mask value
    `MASK_NODATA` is not scored), as TFMA pools a split, at one decision threshold."""
    from schemas.features import MASK_NODATA

    valid = masks != MASK_NODATA
    truth = (masks > 0.5) & valid
    predicted = (probabilities >= threshold) & valid
    tp = float(np.sum(predicted & truth))
    fp = float(np.sum(predicted & ~truth))
    fn = float(np.sum(~predicted & truth))
    return {
        "iou": tp / max(tp + fp + fn, 1.0),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1.0),
        "pixel_accuracy": float(np.sum((predicted == truth) & valid) / max(valid.sum(), 1)),
    }


def fold_of(site_id: str, folds: int) -> int:
    """Fold of a site (`GeoPair.site`; not the hash the train/eval split used): tiles of one
    site share a fold, so no fold trains on ground another scores, and a site keeps its fold
    when others are added or excluded."""
    return int.from_bytes(hashlib.sha256(f"fold:{site_id}".encode()).digest()[:8], "big") % folds


def folds_of(split: Split, folds: int) -> np.ndarray:
    """Each tile's fold, by its site (`fold_of`); tiles without a GeoPair are sites alone."""
    from data.pairs import SITE_PREFIX, GeoPair

    pairs = split.pairs or [None] * len(split.ids)
    return np.array(
        [
            fold_of(p.site if isinstance(p, GeoPair) else SITE_PREFIX + i, folds)
            for i, p in zip(split.ids, pairs, strict=True)
        ],
        dtype=int,
    )


@dataclasses.dataclass
class FoldResult:
    """What one fold's model predicted: probabilities by test-time augmentation mode."""

    held_out: dict[str, np.ndarray]  # mode -> [N,H,W,1]
    seconds: float
    epochs: int
    scene: dict[str, np.ndarray] | None = None
    # site id -> [H, W] blended probabilities of the site's merged raster (`sites`), under
    # the test-time augmentation the exported model serves
    sites: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def merged_sites(split: Split) -> list:
    """`split`'s sites, each merged onto one grid (`data.sites.merge_site`: the image, the
    union of its tiles' masks as the label, `MASK_NODATA` where no tile lies), as the
    pipeline's ScenePredictor puts the eval sites back together before predicting them."""
    from data.sites import merge_site

    by_site: dict[str, list] = {}
    for pair in split.pairs:
        by_site.setdefault(pair.site, []).append(pair)
    return [merge_site(site, tiles) for site, tiles in sorted(by_site.items())]


def window_model(model: Any, mean: np.ndarray, std: np.ndarray, mode: str) -> Any:
    """A `blending.WindowModel` of a Keras model trained here: raw reflectance windows
    [n, S, S, 3] (0: no data) -> [n, S, S] probabilities, normalised as the Transform does and
    averaged over `mode`'s test-time transforms, as the exported model's `serving_default`
    answers (without exporting it: K folds would write K SavedModels)."""
    import tensorflow as tf

    from components.transform_lib import normalize
    from components.unet import symmetry_average

    answer = tf.function(
        lambda x: symmetry_average(model, normalize(x, mean, std), mode)[..., 0],
        reduce_retracing=True,
    )
    return lambda windows: answer(tf.constant(windows, tf.float32)).numpy()


def train_and_predict(
    train: Split,
    held_out: Split,
    config: Any,  # components.config.TrainerConfig
    scene: Split | None = None,
    callbacks: Sequence[Any] = (),
    predict_held_out: bool = True,
    sites: Sequence[Any] = (),
    overlap: int | None = None,
) -> FoldResult:
    """Train the Trainer's model on `train` (early stopping on `held_out`), predict `held_out`
    (unless not `predict_held_out`: then `held_out` is {}) and the scene windows `scene`, if
    given. `callbacks` are extra Keras callbacks (progress). `sites` (`merged_sites`) are
    predicted whole, window by window and blended with `overlap` (default: `tailings
    predict`'s), by `blending.blend_scene`: the code path the ScenePredictor and `tailings
    predict` run."""
    import tensorflow as tf
    import tf_keras as keras

    from components import trainer_lib
    from components.transform_lib import normalize

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train.seed)
    mean = train.images.reshape(-1, 3).mean(0)
    std = train.images.reshape(-1, 3).std(0)
    nodata = trainer_lib.nodata_value(mean, std)

    def dataset(split: Split, training: bool) -> tf.data.Dataset:
        images = normalize(split.images, mean, std)
        if training and config.train.mosaic == "sites":
            # The run_fn's path: the tiles with their georeference, merged by site.
            if len(split.pairs) != len(split.ids):
                raise ValueError('mosaic="sites" needs the tiles\' GeoPairs (georeference)')
            tiles = [
                dataclasses.replace(pair, image=image.numpy(), mask=mask[..., 0].astype("uint8"))
                for pair, image, mask in zip(split.pairs, images, split.masks, strict=True)
            ]
            return trainer_lib.batch_site_windows(tiles, config.train, nodata)
        pairs = tf.data.Dataset.from_tensor_slices((images, split.masks))
        return trainer_lib.batch_pairs(pairs, config.train, training=training, nodata_image=nodata)

    model = trainer_lib.compile_model(config)
    started = time.monotonic()
    history = model.fit(
        dataset(train, True),
        validation_data=dataset(held_out, False),
        epochs=config.train.epochs,
        callbacks=[*trainer_lib.fit_callbacks(config.train), *callbacks],
        verbose=0,
    )
    trainer_lib.finish_training(model, config.train, dataset(train, False))
    seconds = time.monotonic() - started
    predict = d4_predictor(model)  # traced once for both sets (tracing costs seconds)
    blended = {}
    if sites:
        from components.blending import DEFAULT_OVERLAP, blend_scene

        answer = window_model(model, mean, std, config.model.test_time_augmentation)
        tile = train.images.shape[1]
        for site in sites:
            blended[site.site_id] = blend_scene(
                site.image,
                answer,
                tile,
                DEFAULT_OVERLAP if overlap is None else overlap,
                config.train.batch_size,
            )
    return FoldResult(
        sites=blended,
        held_out=(
            predict_all(model, normalize(held_out.images, mean, std), config, predict)
            if predict_held_out
            else {}
        ),
        seconds=seconds,
        epochs=len(history.history["loss"]),
        scene=(
            predict_all(model, normalize(scene.images, mean, std), config, predict)
            if scene is not None
            else None
        ),
    )


def d4_predictor(model: Any) -> Any:
    """A tf.function: images [N,H,W,3] -> the model's outputs under all 8 `d4` transforms."""
    import tensorflow as tf

    from components.unet import TEST_TIME_TRANSFORMS, symmetry_outputs

    every = TEST_TIME_TRANSFORMS["d4"]
    return tf.function(lambda x: tf.stack(symmetry_outputs(model, x, every)), reduce_retracing=True)


def predict_all(
    model: Any, images: np.ndarray, config: Any, predict: Any = None
) -> dict[str, np.ndarray]:
    """Probabilities under every test-time augmentation mode, from the same trained model.

    Every mode's transforms are a subset of `d4`'s, so the 8 `d4` passes run once and each
    mode averages its own subset of them (as `unet.symmetry_average` would compute it).
    `predict`: `d4_predictor(model)`, made here if not given.
    """
    import tensorflow as tf

    from components.unet import TEST_TIME_TRANSFORMS

    every = TEST_TIME_TRANSFORMS["d4"]
    predict = predict or d4_predictor(model)
    step = config.train.batch_size
    # [transforms, N, H, W, 1]
    outputs = np.concatenate(
        [predict(tf.constant(images[i : i + step])).numpy() for i in range(0, len(images), step)],
        axis=1,
    )
    return {
        mode: outputs[[every.index(t) for t in transforms]].mean(axis=0)
        for mode, transforms in TEST_TIME_TRANSFORMS.items()
    }
