"""The ScenePredictor's logic (`components.scene_predictor` is the TFX component): predict each
eval site the way `tailings predict` predicts a scene, and write
examples holding the predictions, so the scene Evaluator scores what a user gets.

The scene split (`data.scenes`) holds each eval site merged into one place, cut into windows
off its tiles' grid. Scored one window at a time, every window's border is a border of the
model's input; `tailings predict` instead slides overlapping windows over the whole scene and
blends them (`components.blending`). This component puts each site's windows back together
(their georeference places them on the site's grid), predicts the site with the same blending
code `tailings predict` runs (the model's `serving_default`, tf.Examples in, so the Transform
graph normalises), and cuts the blended probabilities back into the same windows. Each output
example holds the window's label (the site's union, `MASK_NODATA` where no tile lies), the
candidate's probabilities and, when there is one, the latest blessed model's, beside the ids
and georeference TFMA slices by and the facility metrics measure with.

TFMA then scores them model-agnostically: the Evaluator's model specs are of type
`materialized_prediction`, each naming its `prediction_key` (the candidate's or the
baseline's), so slicing by site and window, bootstrap intervals, value thresholds and the
no-regression check against the baseline all work as before, without TFMA running a model.
The output's schema (also written here) gives the label and prediction their [tile, tile]
shape, which the facility metrics need.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from components.blending import DEFAULT_OVERLAP, WindowModel, blend_scene
from components.warmup import (
    EXAMPLES_INPUT,
    PROBABILITIES,
    SERVING_DEFAULT,
    image_example,
    read_signatures,
    serving_tile_size,
)
from schemas import features as F

# Features of the examples this component writes (the scene Evaluator's model specs name them).
LABEL = "label"  # float32 [tile, tile]: 0/1, MASK_NODATA where no tile of the site lies
PREDICTION = "prediction"  # the candidate's blended probabilities, float32 [tile, tile]
BASELINE_PREDICTION = "baseline_prediction"  # the latest blessed model's, when there is one
KEPT_FEATURES = (F.PAIR_ID, F.SITE_ID, F.CRS_WKT, F.TRANSFORM)  # slicing and pixel areas

PREDICTIONS_FILE = "predictions.tfrecord.gz"  # GZIP, like ExampleGen's and Transform's
SCHEMA_FILE = "schema.pbtxt"
BATCH_SIZE = 4  # windows per model call, as `tailings predict`'s default
# A window's origin must sit this close to a whole pixel of its site: examples store the transform
# as float32, whose step at 45 degrees is 0.04 of a 8.9e-5 degree pixel.
PIXEL_TOLERANCE = 0.25


class SceneAssemblyError(ValueError):
    """The scene split's windows of one site do not lie on one grid."""


@dataclass(frozen=True)
class Window:
    """One window of the scene split: where it sits on its site's canvas, and what it holds."""

    example: dict  # the kept features, as tf.train.Feature protos
    row: int
    col: int
    image: np.ndarray  # [tile, tile, 3] float32, 0 where no data
    label: np.ndarray  # [tile, tile] uint8, MASK_NODATA where no data


@dataclass
class SiteCanvas:
    """One eval site put back together from its windows."""

    site_id: str
    image: np.ndarray  # [H, W, 3]
    windows: list[Window]

    def cut(self, values: np.ndarray, window: Window) -> np.ndarray:
        size = window.label.shape[0]
        return values[window.row : window.row + size, window.col : window.col + size]


def _window(serialized: bytes) -> tuple[str, tuple[float, ...], Window]:
    import tensorflow as tf

    from data.examples import decode_pair

    pair = decode_pair(serialized)
    parsed = tf.train.Example.FromString(serialized).features.feature
    kept = {name: parsed[name] for name in KEPT_FEATURES}
    window = Window(kept, 0, 0, pair.image, pair.site_label)
    return pair.site, pair.transform, window


def assemble_sites(serialized: Iterable[bytes]) -> list[SiteCanvas]:
    """The scene split's windows grouped by site and placed on one canvas per site, in the
    order the sites first appear. A window's place comes from its georeference: the inverse of
    the site's first window's transform takes its origin to (col, row) on the site grid."""
    from affine import Affine

    by_site: dict[str, list[tuple[tuple[float, ...], Window]]] = defaultdict(list)
    for record in serialized:
        site, transform, window = _window(record)
        by_site[site].append((transform, window))
    canvases = []
    for site, items in by_site.items():
        first = Affine(*items[0][0])
        inverse = ~first
        placed = []
        for transform, window in items:
            t = Affine(*transform)
            if not np.allclose(t[:2] + t[3:5], first[:2] + first[3:5], rtol=1e-5, atol=0.0):
                raise SceneAssemblyError(
                    f"site {site}: window {_pair_id(window)} has pixels {t[:2] + t[3:5]}, the "
                    f"site's first window {first[:2] + first[3:5]}: not one grid"
                )
            col, row = inverse @ (t.c, t.f)
            if abs(col - round(col)) > PIXEL_TOLERANCE or abs(row - round(row)) > PIXEL_TOLERANCE:
                raise SceneAssemblyError(
                    f"site {site}: window {_pair_id(window)} starts {col:.3f}, {row:.3f} pixels "
                    "from the first: not on its grid"
                )
            placed.append((round(row), round(col), window))
        top = min(r for r, _c, _w in placed)
        left = min(c for _r, c, _w in placed)
        size = placed[0][2].label.shape[0]
        height = max(r for r, _c, _w in placed) - top + size
        width = max(c for _r, c, _w in placed) - left + size
        image = np.zeros((height, width, placed[0][2].image.shape[-1]), np.float32)
        windows = []
        for r, c, w in placed:
            w = Window(w.example, r - top, c - left, w.image, w.label)
            valid = w.label != F.MASK_NODATA
            target = image[w.row : w.row + size, w.col : w.col + size]
            target[valid] = w.image[valid]
            windows.append(w)
        canvases.append(SiteCanvas(site, image, windows))
    return canvases


def _pair_id(window: Window) -> str:
    return window.example[F.PAIR_ID].bytes_list.value[0].decode()


def serving_default_probabilities(signature, tiles: np.ndarray) -> np.ndarray:
    """[n, S, S, 3] reflectance -> [n, S, S] probabilities through a loaded `serving_default`
    (raw tf.Examples in, as TF Serving's clients and `tailings predict` send them)."""
    import tensorflow as tf

    examples = tf.constant([image_example(tile) for tile in tiles])
    return signature(**{EXAMPLES_INPUT: examples})[PROBABILITIES].numpy()[..., 0]


def load_window_model(model_dir: str) -> tuple[WindowModel, int]:
    """(model, tile size) of a SavedModel folder, called through its `serving_default`."""
    import tensorflow as tf

    tile = serving_tile_size(read_signatures(model_dir), where=model_dir)
    signature = tf.saved_model.load(model_dir).signatures[SERVING_DEFAULT]
    return (lambda tiles: serving_default_probabilities(signature, tiles)), tile


def predicted_examples(
    canvases: Sequence[SiteCanvas],
    models: dict[str, WindowModel],
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = BATCH_SIZE,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[bytes]:
    """Serialized examples, one per window: the kept features, the label and each model's
    blended probabilities under its feature name (`models`: feature name -> model)."""
    import tensorflow as tf

    for canvas in canvases:
        height, width = canvas.image.shape[:2]
        blended = {
            name: blend_scene(canvas.image, model, tile, overlap, batch_size)
            for name, model in models.items()
        }
        say(f"{canvas.site_id}: {width} x {height} pixels, {len(canvas.windows)} windows")
        for window in canvas.windows:
            if window.label.shape != (tile, tile):
                raise SceneAssemblyError(
                    f"window {_pair_id(window)} is {window.label.shape}, the model takes "
                    f"{tile} x {tile}"
                )
            feature = dict(window.example)
            feature[LABEL] = _floats(window.label)
            for name, probabilities in blended.items():
                feature[name] = _floats(canvas.cut(probabilities, window))
            yield tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
                deterministic=True
            )


def _floats(values: np.ndarray):
    import tensorflow as tf

    flat = np.asarray(values, dtype=np.float32).ravel()
    return tf.train.Feature(float_list=tf.train.FloatList(value=flat))


def prediction_schema(tile: int, prediction_keys: Sequence[str]):
    """The TFMD schema of the examples `predicted_examples` writes: the label and predictions
    are dense [tile, tile], the ids and georeference as in ExampleGen's schema."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()

    def add(name: str, kind: int, dims: Sequence[int]) -> None:
        feature = schema.feature.add(name=name, type=kind)
        feature.presence.min_fraction = 1.0
        for size in dims:
            feature.shape.dim.add(size=size)

    add(F.PAIR_ID, schema_pb2.BYTES, [])
    add(F.SITE_ID, schema_pb2.BYTES, [])
    add(F.CRS_WKT, schema_pb2.BYTES, [])
    add(F.TRANSFORM, schema_pb2.FLOAT, [6])
    add(LABEL, schema_pb2.FLOAT, [tile, tile])
    for key in prediction_keys:
        add(key, schema_pb2.FLOAT, [tile, tile])
    return schema


def predict_split(
    example_files: Sequence[str],
    model_dirs: dict[str, str],
    out_dir: str,
    schema_dir: str,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = BATCH_SIZE,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[int, int]:
    """Predict one split's sites with each model (feature name -> SavedModel folder); write
    `out_dir/PREDICTIONS_FILE` and `schema_dir/SCHEMA_FILE` (through `tf.io.gfile`, so local
    folders and object storage alike). Returns (sites, windows)."""
    import tensorflow as tf
    from google.protobuf import text_format

    canvases = assemble_sites(
        record.numpy()
        for record in tf.data.TFRecordDataset(list(example_files), compression_type="GZIP")
    )
    models, tiles = {}, set()
    for name, folder in model_dirs.items():
        models[name], tile = load_window_model(folder)
        tiles.add(tile)
    if len(tiles) != 1:
        raise SceneAssemblyError(f"the models take different tile sizes {sorted(tiles)}")
    tile = tiles.pop()
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, PREDICTIONS_FILE)
    windows = 0
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in predicted_examples(canvases, models, tile, overlap, batch_size, say):
            writer.write(record)
            windows += 1
    schema = prediction_schema(tile, list(models))
    tf.io.gfile.makedirs(schema_dir)
    with tf.io.gfile.GFile(os.path.join(schema_dir, SCHEMA_FILE), "w") as fh:
        fh.write(text_format.MessageToString(schema))
    return len(canvases), windows
