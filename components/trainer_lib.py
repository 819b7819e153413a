"""TFX Trainer logic: train the U-Net on Transform's output and export three signatures.

Signatures of the exported SavedModel (all return `probabilities` [N,H,W,1]):
- `serving_default`: serialized raw tf.Example (`examples`) -> transform graph -> model;
- `transform_features`: serialized raw tf.Example -> transformed features incl. the label
  (TFMA's `preprocessing_function_names`, so TFMA can read the decoded mask);
- `predict_image`: float32 reflectance `images` [N,H,W,3] -> the Transform's normalisation,
  baked in as constants -> model; for clients that hold pixels rather than tf.Examples.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components import metrics as metrics_lib
from components import progress
from components.config import TrainConfig, TrainerConfig, with_hyperparameters
from components.transform_lib import (
    CRS_WKT_XF,
    GEOTRANSFORM_XF,
    IMAGE_XF,
    MASK_XF,
    PAIR_ID_XF,
    PIXEL_MEAN,
    PIXEL_STD,
    RAW_INPUT_KEYS,
    SERVING_INPUT_KEYS,
    SITE_ID_XF,
    label_key,
    normalize,
)
from components.unet import (
    OUTPUT_NAME,
    build_model,
    shift_decision_threshold,
    symmetry_average,
)
from schemas import features

log = logging.getLogger(__name__)

# Signature and tensor names of the exported model.
SERVING_DEFAULT = "serving_default"
TRANSFORM_FEATURES = "transform_features"
PREDICT_IMAGE = "predict_image"
EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"
PROBABILITIES = OUTPUT_NAME

# What run_fn writes into fn_args.model_run_dir (besides TensorBoard logs).
FIGURES_DIR = "figures"
HISTORY_FILE = "history.json"
CONFIG_FILE = "trainer_config.json"
ASSETS_EXTRA = "assets.extra"  # SavedModel folder for extra files (TF Serving's warmup too)
CURVES_FILE = "training_curves.png"
CURVE_METRICS = ("loss", "pixel_accuracy", "iou")

# Display: files hold B2,B3,B4 (blue, green, red); RGB wants them reversed.
DISPLAY_BANDS = (2, 1, 0)
STRETCH_PERCENTILES = (2.0, 98.0)
FIGURE_DPI = 100
PANEL_INCHES = 4.0

TFRECORD_COMPRESSION = "GZIP"  # what TFX Transform writes
SEED_PARTS = 4  # crop, left-right flip, up-down flip, rotation
COLOR_SEED_STREAM = 1  # jitter_bands' seeds: folded in, apart from the geometric ones
SCALE_SEED_STREAM = 2  # rescale's seeds, likewise (switching it on leaves the others as they were)


def _list_files(patterns: Sequence[str]) -> list[str]:
    """Expand TFX file patterns (`.../Split-train/*`); an empty split is a wiring error."""
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"no transformed examples match {list(patterns)}")
    return files


def _records(patterns: Sequence[str]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(_list_files(patterns), compression_type=TFRECORD_COMPRESSION)


def augment(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, config: TrainConfig, crop: bool = True
) -> tuple[tf.Tensor, tf.Tensor]:
    """Same random rescale / crop / flips / 90-degree rotation for an image [H,W,C] and its
    mask, then (image only) the band jitter of `config.augment_color`.

    `crop=False`: the caller has cut the window already (`mosaic_window`).
    Stateless ops keyed by `seed` ([2] ints) keep runs reproducible.
    """
    channels = image.shape[-1]
    stacked = tf.concat([image, tf.cast(mask, image.dtype)], axis=-1)
    seeds = tf.random.experimental.stateless_split(seed, num=SEED_PARTS)
    if config.augment_scale > 0:
        stacked = rescale(stacked, seed, config.augment_scale)
    if crop and config.crop_size is not None:
        size = config.crop_size
        stacked = tf.image.stateless_random_crop(stacked, [size, size, channels + 1], seeds[0])
    if config.augment_flip:
        stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[1])
        stacked = tf.image.stateless_random_flip_up_down(stacked, seeds[2])
    if config.augment_rot90:
        quarter_turns = tf.random.stateless_uniform([], seeds[3], 0, 4, dtype=tf.int32)
        stacked = tf.image.rot90(stacked, quarter_turns)
    image, mask = stacked[..., :channels], tf.round(stacked[..., channels:])
    if config.augment_color > 0:
        image = jitter_bands(image, seed, config.augment_color)
    return image, mask


def _seed_stream(seed: tf.Tensor, stream: int, parts: int) -> tf.Tensor:
    """`parts` seeds of their own for one augmentation, folded from the example's `seed`, so
    switching that augmentation on or off leaves every other draw as it was."""
    return tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, stream), num=parts
    )


def rescale(stacked: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Zoom [H,W,C] by a random factor exp(U(-s, s)) about a random point, keeping H and W.

    Facilities come in every size; zooming shows the network each one at other sizes than the
    73 tiles happen to hold. Zoom in: bilinear resize, then a random H x W window. Zoom out:
    resize, then mirror-pad back to H x W (reflection keeps the edges plausible, where zeros
    would be a band value no scene has). The mask channel is interpolated too and rounded
    back to 0/1 by `augment`.
    """
    seeds = _seed_stream(seed, SCALE_SEED_STREAM, parts=2)
    height, width, channels = stacked.shape
    factor = tf.exp(tf.random.stateless_uniform([], seeds[0], -strength, strength))
    size = tf.constant([height, width])
    resized_size = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    resized = tf.image.resize(stacked, resized_size, method="bilinear")
    short = tf.maximum(size - resized_size, 0)
    resized = tf.pad(
        resized,
        [
            [short[0] // 2, short[0] - short[0] // 2],
            [short[1] // 2, short[1] - short[1] // 2],
            [0, 0],
        ],
        mode="REFLECT",
    )
    return tf.image.stateless_random_crop(resized, [height, width, channels], seeds[1])


def jitter_bands(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Random per-band gain exp(N(0, s)) and offset N(0, s) of a normalised image [H,W,C].

    Stands in for what differs between scenes and sites (haze, season, sun angle, sensor
    A/B) so the network leans less on exact band levels. Its own seed stream (folded from
    `seed`), so switching it on leaves the geometric augmentation unchanged.
    """
    seeds = _seed_stream(seed, COLOR_SEED_STREAM, parts=2)
    bands = image.shape[-1:]
    gain = tf.exp(tf.random.stateless_normal(bands, seeds[0], stddev=strength))
    offset = tf.random.stateless_normal(bands, seeds[1], stddev=strength)
    return image * tf.cast(gain, image.dtype) + tf.cast(offset, image.dtype)


def make_dataset(
    patterns: Sequence[str],
    feature_spec: dict[str, Any],
    config: TrainConfig,
    training: bool,
    repeat: bool = False,
    nodata_image: np.ndarray | None = None,
) -> tf.data.Dataset:
    """(image_xf, label) batches from transformed gzip TFRecords; augmented if training. The
    label is the one `config.labels` names (the site label or the tile's own mask)."""
    label = label_key(config.labels)
    if training and config.mosaic == "sites":
        tiles = read_geo_tiles(patterns, feature_spec, label)
        return batch_site_windows(tiles, config, nodata_image, repeat)
    spec = {key: feature_spec[key] for key in (IMAGE_XF, label)}

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(record, spec)
        return parsed[IMAGE_XF], parsed[label]

    dataset = _records(patterns).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return batch_pairs(dataset, config, training, repeat, nodata_image)


def batch_pairs(
    dataset: tf.data.Dataset,
    config: TrainConfig,
    training: bool,
    repeat: bool = False,
    nodata_image: np.ndarray | None = None,
) -> tf.data.Dataset:
    """(image, mask) pairs -> cached, shuffled, augmented (if training) batches.

    Training with `config.mosaic` other than "none" yields windows cut from mosaics
    (`mosaic_windows`), as many per pass as there are tiles; `nodata_image` is what a no-data
    pixel becomes after normalisation (needed when `config.mosaic_empty` > 0).
    """
    if config.cache:
        dataset = dataset.cache()
    if training:
        if config.mosaic == "sites":
            raise ValueError('mosaic="sites" trains on merged sites: use batch_site_windows')
        if config.mosaic != "none":
            dataset = mosaic_windows(dataset, config, nodata_image)
        else:
            dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
        dataset = _augmented(dataset, config, crop=config.mosaic == "none")
    return _batched(dataset, config, repeat)


def _augmented(windows: tf.data.Dataset, config: TrainConfig, crop: bool) -> tf.data.Dataset:
    """`augment` each (image, mask) with its own stateless seed."""
    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((windows, seeds.batch(2))).map(
        lambda pair, seed: augment(pair[0], pair[1], seed, config, crop=crop),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _batched(dataset: tf.data.Dataset, config: TrainConfig, repeat: bool) -> tf.data.Dataset:
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


# "sites": how far (a share of the window's side) a window may reach past its site's edge, so a
# one-tile site still gives windows at many positions; the part past the edge is no data.
SITE_OVERHANG = 1 / 4
BACKGROUND_TRIES = 20  # positions tried for a tailings-free window before taking any


def read_geo_tiles(patterns: Sequence[str], feature_spec: dict[str, Any], label: str) -> list:
    """The transformed tiles with their georeference, as `data.pairs.GeoPair`s (normalised
    image; `label` as the mask) for merging by site."""
    from data.pairs import GeoPair

    keys = (IMAGE_XF, label, PAIR_ID_XF, SITE_ID_XF, CRS_WKT_XF, GEOTRANSFORM_XF)
    missing = [key for key in keys if key not in feature_spec]
    if missing:
        raise ValueError(f'mosaic="sites" needs the transformed features {missing}')
    spec = {key: feature_spec[key] for key in keys}
    tiles = []
    for record in _records(patterns):
        parsed = tf.io.parse_single_example(record, spec)
        tiles.append(
            GeoPair(
                pair_id=parsed[PAIR_ID_XF].numpy().decode(),
                image=parsed[IMAGE_XF].numpy(),
                mask=(parsed[label].numpy()[..., 0] > 0.5).astype(np.uint8),
                band_names=features.BAND_ORDER,
                crs_wkt=parsed[CRS_WKT_XF].numpy().decode(),
                epsg=0,
                transform=tuple(float(v) for v in parsed[GEOTRANSFORM_XF].numpy()),
                site_id=parsed[SITE_ID_XF].numpy().decode(),
            )
        )
    return tiles


class SiteWindowSampler:
    """Random training windows over merged sites: what torchgeo's RandomGeoSampler does over
    georeferenced scenes, in the pixels of each site's grid (torchgeo itself would bring
    PyTorch and its own dataset classes for this one draw).

    Each call yields one pass of `count` windows: a site drawn with probability proportional to
    its pixels with data, then a position uniformly where the window lies within the site but
    for at most `SITE_OVERHANG` of its side; with probability `background` the position is one
    whose label holds no tailings (up to `BACKGROUND_TRIES` draws). Windows are [size, size, 3]
    images (`fill` where no data) and [size, size, 1] labels (`MASK_NODATA` where no data, which
    the losses and metrics skip). Pass k draws from numpy's generator seeded by (seed, k).
    """

    def __init__(self, sites, size: int, count: int, seed: int, background: float, fill):  # noqa: ANN001
        self.size, self.count, self.seed, self.background = size, count, seed, background
        self.images, self.labels = [], []
        for site in sites:
            nodata = site.label == features.MASK_NODATA
            image = np.where(nodata[..., None], np.asarray(fill, np.float32), site.image)
            self.images.append(image.astype(np.float32))
            self.labels.append(site.label)
        valid = np.array([(label != features.MASK_NODATA).sum() for label in self.labels], float)
        self.weights = valid / valid.sum()
        self.fill = np.asarray(fill, np.float32)
        self.passes = 0

    def _origin(self, rng: np.random.Generator, k: int) -> tuple[int, int]:
        height, width = self.labels[k].shape
        reach = int(self.size * SITE_OVERHANG)
        y = rng.integers(-reach, max(height - self.size + reach, -reach) + 1)
        x = rng.integers(-reach, max(width - self.size + reach, -reach) + 1)
        return int(y), int(x)

    def window(self, k: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        size, image, label = self.size, self.images[k], self.labels[k]
        out_image = np.broadcast_to(self.fill, (size, size, image.shape[-1])).copy()
        out_label = np.full((size, size), features.MASK_NODATA, np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + size, label.shape[0]), min(x + size, label.shape[1])
        if y1 > y0 and x1 > x0:
            out_image[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
            out_label[y0 - y : y1 - y, x0 - x : x1 - x] = label[y0:y1, x0:x1]
        return out_image, out_label[..., None].astype(np.float32)

    def __call__(self):
        rng = np.random.default_rng([self.seed, self.passes])
        self.passes += 1
        for _ in range(self.count):
            k = int(rng.choice(len(self.weights), p=self.weights))
            tries = BACKGROUND_TRIES if rng.random() < self.background else 1
            for _ in range(tries):
                image, label = self.window(k, *self._origin(rng, k))
                if not (label == 1).any():
                    break
            yield image, label


def batch_site_windows(
    tiles: Sequence[Any],
    config: TrainConfig,
    nodata_image: np.ndarray | None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Training batches for `mosaic="sites"`: `tiles` (GeoPairs: normalised images, the training
    label as mask, georeference, site id) merged by site (`data.sites.merge_site`), one pass =
    as many random windows (`SiteWindowSampler`) as there are tiles, augmented as any window."""
    from data.sites import merge_site

    if nodata_image is None:
        raise ValueError('mosaic="sites" needs the normalised no-data value (nodata_image)')
    by_site: dict[str, list] = {}
    for tile in tiles:
        by_site.setdefault(tile.site, []).append(tile)
    sites = [merge_site(site, members) for site, members in sorted(by_site.items())]
    size = config.crop_size or int(tiles[0].mask.shape[0])
    bands = int(tiles[0].image.shape[-1])
    sampler = SiteWindowSampler(
        sites, size, len(tiles), config.seed, config.site_background, nodata_image
    )
    windows = tf.data.Dataset.from_generator(
        sampler,
        output_signature=(
            tf.TensorSpec([size, size, bands], tf.float32),
            tf.TensorSpec([size, size, 1], tf.float32),
        ),
    )
    return _batched(_augmented(windows, config, crop=False), config, repeat)


MOSAIC_TILES = 4  # a mosaic is 2 x 2 tiles (or parts of them)


def mosaic_windows(
    tiles: tf.data.Dataset, config: TrainConfig, nodata_image: np.ndarray | None = None
) -> tf.data.Dataset:
    """(image, mask) tiles -> one pass of random windows, each from its own mosaic of four
    random tiles (`config.mosaic`: "grid" or "random", see `mosaic_window`).

    Tiles are drawn from a shuffled stream; a pass holds as many windows as there are tiles
    (one count of the tiles first), so an epoch costs what an epoch of whole tiles did when
    the window is tile-sized. Written here because neither Keras nor tf.data has a mosaic
    augmentation for segmentation (KerasCV's targets detection boxes and multi-backend Keras).
    """
    if config.mosaic_empty > 0 and nodata_image is None:
        raise ValueError("mosaic_empty > 0 needs the normalised no-data value (nodata_image)")
    fill = tf.constant(
        np.zeros(3, np.float32) if nodata_image is None else np.asarray(nodata_image, np.float32)
    )
    count = int(tiles.reduce(np.int64(0), lambda n, _: n + 1))
    groups = (
        tiles.repeat()
        .shuffle(config.shuffle_buffer, seed=config.seed)
        .batch(MOSAIC_TILES, drop_remainder=True)
    )
    seeds = tf.data.Dataset.random(seed=config.seed + 1, rerandomize_each_iteration=True)
    return (
        tf.data.Dataset.zip((groups, seeds.batch(2)))
        .map(
            lambda group, seed: mosaic_window(group[0], group[1], seed, config, fill),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .take(count)
    )


def mosaic_window(
    images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor, config: TrainConfig, fill: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Four tiles [4,T,T,C] and masks [4,T,T,1] -> one window [S,S,C], [S,S,1] (S = crop_size
    or T).

    "grid": the tiles laid 2 x 2, the window cut at a uniformly random offset (as the scene
    split cuts its mosaics). "random" (YOLOv4's mosaic): a centre drawn uniformly in the
    middle half of the window splits it into four parts; part k is a random crop of tile k of
    the part's size. Each tile / part is no data with probability `config.mosaic_empty`
    (image `fill`, mask background).
    """
    tile = images.shape[1]
    size = config.crop_size or tile
    channels = images.shape[-1]
    seeds = tf.random.experimental.stateless_split(seed, num=2 + MOSAIC_TILES)
    empty = tf.random.stateless_uniform([MOSAIC_TILES], seeds[0]) < config.mosaic_empty
    images = tf.where(empty[:, None, None, None], fill, images)
    masks = tf.where(empty[:, None, None, None], tf.zeros_like(masks), masks)
    stacked = tf.concat([images, tf.cast(masks, images.dtype)], axis=-1)
    if config.mosaic == "grid":
        rows = [tf.concat([stacked[0], stacked[1]], axis=1), tf.concat([stacked[2], stacked[3]], 1)]
        window = tf.image.stateless_random_crop(
            tf.concat(rows, axis=0), [size, size, channels + 1], seeds[1]
        )
    else:
        centre = tf.random.stateless_uniform(
            [2], seeds[1], size // 4, size - size // 4 + 1, dtype=tf.int32
        )
        heights = tf.stack([centre[0], centre[0], size - centre[0], size - centre[0]])
        widths = tf.stack([centre[1], size - centre[1], centre[1], size - centre[1]])
        parts = [
            tf.image.stateless_random_crop(
                stacked[k], tf.stack([heights[k], widths[k], channels + 1]), seeds[2 + k]
            )
            for k in range(MOSAIC_TILES)
        ]
        window = tf.concat([tf.concat(parts[:2], axis=1), tf.concat(parts[2:], axis=1)], axis=0)
        window = tf.ensure_shape(window, [size, size, channels + 1])
    return window[..., :channels], window[..., channels:]


def read_normalization(
    patterns: Sequence[str], feature_spec: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The Transform's per-band mean and std (constant across examples, so read one)."""
    spec = {key: feature_spec[key] for key in (PIXEL_MEAN, PIXEL_STD)}
    for record in _records(patterns).take(1):
        parsed = tf.io.parse_single_example(record, spec)
        return parsed[PIXEL_MEAN].numpy(), parsed[PIXEL_STD].numpy()
    raise ValueError(f"no records in {list(patterns)}")


def nodata_value(pixel_mean: np.ndarray, pixel_std: np.ndarray) -> np.ndarray:
    """What a no-data pixel (reflectance 0: the scene split's empty cells, `tailings
    predict`'s fill) becomes after the Transform's normalisation."""
    return np.asarray(normalize(np.zeros_like(pixel_mean), pixel_mean, pixel_std))


def _write_bytes(path: str, data: bytes) -> None:
    """Write via tf.io.gfile so model_run_dir may be a GCS/S3 URI as well as a local path."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(data)


def _save_figure(figure: Any, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    _write_bytes(path, buffer.getvalue())


def plot_history(history: dict[str, list[float]], path: str) -> None:
    """Loss, pixel accuracy and IoU per epoch, train vs validation, as one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg output)
    from matplotlib.ticker import MaxNLocator

    names = [name for name in CURVE_METRICS if name in history]
    figure = Figure(figsize=(PANEL_INCHES * len(names), PANEL_INCHES * 0.75))
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        epochs = np.arange(1, len(history[name]) + 1)
        axes.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            axes.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(name)
        axes.grid(alpha=0.3)
        axes.legend()
    _save_figure(figure, path)


def to_display_rgb(reflectance: np.ndarray) -> np.ndarray:
    """[H,W,3] in file order B2,B3,B4 -> percentile-stretched RGB (B4,B3,B2) in [0,1]."""
    rgb = reflectance[..., list(DISPLAY_BANDS)].astype(np.float64)
    low, high = np.percentile(rgb.reshape(-1, 3), STRETCH_PERCENTILES, axis=0)
    return np.clip((rgb - low) / np.maximum(high - low, np.finfo(np.float32).eps), 0.0, 1.0)


def _example_iou(truth: np.ndarray, predicted: np.ndarray) -> float:
    union = np.logical_or(truth, predicted).sum()
    return float(np.logical_and(truth, predicted).sum() / union) if union else 1.0


def plot_predictions(
    model: keras.Model,
    patterns: Sequence[str],
    feature_spec: dict[str, Any],
    out_dir: str,
    max_figures: int,
    batch_size: int,
    test_time_augmentation: str = "none",
    label: str = MASK_XF,
) -> list[str]:
    """One PNG per eval example, as in the study: RGB | ground truth (`label`) | prediction.

    The prediction is the exported model's (same test-time augmentation).
    """
    from matplotlib.figure import Figure

    if max_figures == 0:
        return []
    keys = (IMAGE_XF, label, PIXEL_MEAN, PIXEL_STD, PAIR_ID_XF)
    spec = {key: feature_spec[key] for key in keys if key in feature_spec}
    dataset = (
        _records(patterns)
        .take(max_figures)
        .batch(batch_size)
        .map(lambda records: tf.io.parse_example(records, spec))
    )
    paths = []
    for batch in dataset:
        probabilities = symmetry_average(model, batch[IMAGE_XF], test_time_augmentation).numpy()
        reflectance = (
            batch[IMAGE_XF].numpy() * batch[PIXEL_STD].numpy()[:, None, None, :]
            + batch[PIXEL_MEAN].numpy()[:, None, None, :]
        )
        for i in range(reflectance.shape[0]):
            pair_id = (
                batch[PAIR_ID_XF][i].numpy().decode() if PAIR_ID_XF in batch else f"{len(paths)}"
            )
            truth = batch[label][i, ..., 0].numpy() > metrics_lib.THRESHOLD
            predicted = probabilities[i, ..., 0] > metrics_lib.THRESHOLD
            figure = Figure(figsize=(3 * PANEL_INCHES, PANEL_INCHES))
            panels = (
                (to_display_rgb(reflectance[i]), "RGB (B4, B3, B2)"),
                (truth, "ground truth"),
                (predicted, f"prediction (IoU {_example_iou(truth, predicted):.2f})"),
            )
            for index, (picture, title) in enumerate(panels):
                axes = figure.add_subplot(1, 3, index + 1)
                axes.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1)
                axes.set_title(title)
                axes.axis("off")
            figure.suptitle(pair_id)
            safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id)
            path = os.path.join(out_dir, f"{safe_name}.png")
            _save_figure(figure, path)
            paths.append(path)
    return paths


def export_serving_model(
    model: keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    pixel_mean: np.ndarray,
    pixel_std: np.ndarray,
    serving_model_dir: str,
    size_multiple: int = 1,
    test_time_augmentation: str = "none",
) -> None:
    """Save the model with `serving_default`, `transform_features` and `predict_image`.

    `predict_image` rejects images whose sides are not multiples of `size_multiple`. Both
    prediction signatures average over `test_time_augmentation`'s transforms, so TFMA scores
    exactly what TF Serving returns.
    """

    def probabilities(images: tf.Tensor) -> tf.Tensor:
        return symmetry_average(model, images, test_time_augmentation)

    # TFX convention: attaching the layer to the model tracks the transform graph's assets.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    # Requests need only the image (labels and metadata are optional, extra ones ignored).
    serving_spec = {key: raw_spec[key] for key in SERVING_INPUT_KEYS}
    eval_spec = {key: raw_spec[key] for key in RAW_INPUT_KEYS if key in raw_spec}
    mean = tf.constant(pixel_mean, tf.float32)
    std = tf.constant(pixel_std, tf.float32)
    examples_signature = [tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)]

    @tf.function(input_signature=examples_signature)
    def serve_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = model.tft_layer(tf.io.parse_example(examples, serving_spec))
        return {PROBABILITIES: probabilities(transformed[IMAGE_XF])}

    @tf.function(input_signature=examples_signature)
    def transform_features(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.tft_layer(tf.io.parse_example(examples, eval_spec))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, features.EXPECTED_BANDS], tf.float32, IMAGES_INPUT)
        ]
    )
    def predict_image(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # Say what is wrong in the error the client gets, instead of a shape clash deep
        # inside the network.
        sides = tf.shape(images)[1:3]
        size_check = tf.debugging.assert_equal(
            sides % size_multiple,
            tf.zeros_like(sides),
            message=f"{IMAGES_INPUT} must be [N, H, W, 3] with H and W multiples of "
            f"{size_multiple}",
        )
        with tf.control_dependencies([size_check]):
            images = tf.identity(images)
        return {PROBABILITIES: probabilities(normalize(images, mean, std))}

    signatures = {
        SERVING_DEFAULT: serve_examples,
        TRANSFORM_FEATURES: transform_features,
        PREDICT_IMAGE: predict_image,
    }
    model.save(serving_model_dir, save_format="tf", signatures=signatures)


def compile_model(config: TrainerConfig) -> keras.Model:
    """The network with its optimizer (Adam, optionally averaging weights), loss and metrics."""
    model = build_model(config.model)
    ema = config.train.ema_momentum
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=config.train.learning_rate,
            use_ema=ema is not None,
            ema_momentum=ema if ema is not None else 0.99,  # Keras' default; unused then
        ),
        loss=metrics_lib.get_loss(config.model.loss),
        metrics=metrics_lib.training_metrics(),
    )
    return model


def recalibrate_batch_norm(model: keras.Model, batches: tf.data.Dataset) -> int:
    """Re-estimate BatchNorm's moving statistics for the weights the model holds now.

    fit() swaps the averaged weights in at the end, but the moving means and variances were
    gathered under the raw weights of the last steps; with the pretrained encoder that
    mismatch cost 0.13 IoU out of fold (measured). One pass over the training tiles in
    training mode, with momentum 1 - 1/k on batch k, makes each statistic the plain average
    over the pass (as SWA's `bn_update` does). Returns how many layers were re-estimated.
    """
    norms = [
        layer
        for layer in model.submodules
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    try:
        for step, (images, _) in enumerate(batches, start=1):
            for layer in norms:
                layer.momentum = 1.0 - 1.0 / step
            model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return len(norms)


def finish_training(model: keras.Model, config: TrainConfig, batches: tf.data.Dataset) -> None:
    """After fit(): BatchNorm statistics that match the averaged weights, if averaging.

    Reads at most `config.recalibration_batches` batches of `batches`.
    """
    if config.ema_momentum is not None:
        recalibrate_batch_norm(model, batches.take(config.recalibration_batches))


def early_stopping(config: TrainConfig) -> keras.callbacks.EarlyStopping:
    """Stop when eval loss stalls; keep the best epoch's weights unless averaging weights."""
    return keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=config.early_stopping_patience,
        # fit() swaps the averaged weights in at the end; restoring one epoch's raw weights
        # would throw the average away.
        restore_best_weights=config.ema_momentum is None,
    )


def scheduled_learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate of `epoch` (0-based) under `config.lr_schedule`."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))


def fit_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """Early stopping, plus the per-epoch learning-rate schedule when it is not constant."""
    callbacks: list[keras.callbacks.Callback] = [early_stopping(config)]
    if config.lr_schedule != "constant":
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch: scheduled_learning_rate(config, epoch)
            )
        )
    return callbacks


def run_fn(fn_args: Any) -> None:
    """Train and export; `fn_args` is TFX's `FnArgs` (custom_config from components.config).

    Steps per epoch come from `TrainConfig.steps_per_epoch`, else `TrainArgs.num_steps`
    (`fn_args.train_steps`), else one full pass over the train split; likewise for eval.
    """
    config = TrainerConfig.from_custom_config(fn_args.custom_config)
    if fn_args.hyperparameters:  # the Tuner's best values (`tailings run --tune`)
        config = with_hyperparameters(config, fn_args.hyperparameters)
    train_config = config.train
    keras.utils.set_random_seed(train_config.seed)

    tf_transform_output = tft.TFTransformOutput(
        fn_args.transform_graph_path or fn_args.transform_output
    )
    feature_spec = tf_transform_output.transformed_feature_spec()
    config.check_tile_size(int(feature_spec[IMAGE_XF].shape[0]))  # fail before training

    steps_per_epoch = train_config.steps_per_epoch or fn_args.train_steps
    validation_steps = train_config.validation_steps or fn_args.eval_steps
    pixel_mean, pixel_std = read_normalization(fn_args.train_files, feature_spec)
    train_dataset = make_dataset(
        fn_args.train_files,
        feature_spec,
        train_config,
        training=True,
        repeat=bool(steps_per_epoch),
        nodata_image=nodata_value(pixel_mean, pixel_std),
    )
    eval_dataset = make_dataset(
        fn_args.eval_files,
        feature_spec,
        train_config,
        training=False,
        repeat=bool(validation_steps),
    )

    model = compile_model(config)
    callbacks = [
        *fit_callbacks(train_config),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        # A line per epoch on the terminal of `tailings run` and in its log.
        progress.epoch_progress(
            progress.TRAINER_LABEL, train_config.epochs, metric=metrics_lib.IOU
        ),
    ]
    history = model.fit(
        train_dataset,
        validation_data=eval_dataset,
        epochs=train_config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        callbacks=callbacks,
        verbose=2,
    )

    # What follows fit() is timed in the log: it counts against the run's 15-minute budget
    # (fit() itself returned 0-38 s after its last epoch line in whole runs; not explained).
    log.info("Trainer: fit() returned after %d epochs", len(history.epoch))
    started = time.monotonic()
    # One pass: caching it would hold a second in-memory copy of the train split.
    once = dataclasses.replace(train_config, cache=False)
    finish_training(
        model, train_config, make_dataset(fn_args.train_files, feature_spec, once, False)
    )
    log.info("Trainer: batch-norm statistics re-estimated in %.1f s", time.monotonic() - started)
    started = time.monotonic()
    # After training (the loss needs the raw probabilities), before figures and export.
    shift_decision_threshold(model, config.model.decision_threshold)

    run_dir = fn_args.model_run_dir
    curves = {name: [float(v) for v in values] for name, values in history.history.items()}
    _write_bytes(os.path.join(run_dir, HISTORY_FILE), json.dumps(curves, indent=2).encode())
    config_json = json.dumps(config.to_custom_config(), indent=2).encode()
    _write_bytes(os.path.join(run_dir, CONFIG_FILE), config_json)
    plot_history(curves, os.path.join(run_dir, CURVES_FILE))
    plot_predictions(
        model,
        fn_args.eval_files,
        feature_spec,
        os.path.join(run_dir, FIGURES_DIR),
        max_figures=train_config.max_figures,
        batch_size=train_config.batch_size,
        test_time_augmentation=config.model.test_time_augmentation,
        label=label_key(train_config.labels),
    )

    log.info("Trainer: history and figures written in %.1f s", time.monotonic() - started)
    started = time.monotonic()
    export_serving_model(
        model,
        tf_transform_output,
        pixel_mean,
        pixel_std,
        fn_args.serving_model_dir,
        size_multiple=config.model.size_multiple,
        test_time_augmentation=config.model.test_time_augmentation,
    )
    # The recipe travels with the model (and with every version the Pusher copies): TF Serving
    # ignores assets.extra except for its warmup requests.
    _write_bytes(os.path.join(fn_args.serving_model_dir, ASSETS_EXTRA, CONFIG_FILE), config_json)
    log.info("Trainer: serving model exported in %.1f s", time.monotonic() - started)
