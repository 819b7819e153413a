"""The `scene` split: eval tiles mosaicked together and cut into windows that never line up.

The study's tiles are centred on a facility, so a model scored on whole tiles can score well by
marking the middle of the tile, and fail on a real scene, where `tailings predict` cuts windows
wherever the scene's grid puts them. The scene split measures that use without new labels:

1. The eval pairs are ordered by a hash of (`SceneConfig.seed`, pair id) and taken
   `tiles_per_mosaic` at a time (the last mosaic may hold fewer).
2. Each group is laid out row by row on a grid of ceil(sqrt(n)) columns; grid cells without a
   tile are no data (image 0, mask `MASK_NODATA`), as at the edge of a real scene.
3. The mosaic is cut into tile-sized windows on a grid shifted by an offset (oy, ox) drawn per
   mosaic from `numpy.random.default_rng([seed, mosaic])` in [size/8, 7 size/8): no window
   edge ever falls on a tile edge, and the windows cover every pixel of every tile (the first
   row and column of windows start before the mosaic, the last ones end after it). So a
   facility appears whole, cut by a window edge, off-centre, several per window, or not at all.
   Windows with no valid pixel are dropped.

Each window is a `tf.Example` with every feature of `schemas.features` (statistics over its
valid pixels); its georeference is that of the tile covering most of it, shifted to the
window's origin, so per-pixel areas come out right. Its pair id names the mosaic and window,
and `layout()` records which tile sits where (the ExampleGen writes it to `scene_layout.json`).
Everything depends only on the eval pair ids and the seed: the same data gives the same split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import Metrics, MetricsFilter

from data.config import SceneConfig, ValidationConfig
from data.convert import atomic_tfrecord
from data.examples import to_example
from data.pairs import GeoPair, PairSpec, Rejection, validate
from schemas import features as F


@dataclass(frozen=True)
class Mosaic:
    """Which eval tile sits in which grid cell of one mosaic, and the window offset."""

    index: int
    pair_ids: tuple[str, ...]  # row by row; len <= rows * cols
    cols: int
    offset: tuple[int, int]  # (oy, ox): windows start at -oy + k * size, -ox + k * size

    @property
    def rows(self) -> int:
        return math.ceil(len(self.pair_ids) / self.cols)

    def cell(self, k: int) -> tuple[int, int]:
        return divmod(k, self.cols)

    def window_origins(self, size: int) -> list[tuple[int, int]]:
        oy, ox = self.offset
        return [
            (y, x)
            for y in range(-oy, self.rows * size, size)
            for x in range(-ox, self.cols * size, size)
        ]

    def to_dict(self) -> dict:
        return {
            "mosaic": self.index,
            "cols": self.cols,
            "rows": self.rows,
            "offset": list(self.offset),
            "tiles": [
                {"pair_id": pid, "row": self.cell(k)[0], "col": self.cell(k)[1]}
                for k, pid in enumerate(self.pair_ids)
            ],
        }


def _order_key(seed: int, pair_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()


def plan_mosaics(pair_ids: Sequence[str], tile_size: int, cfg: SceneConfig) -> list[Mosaic]:
    """The mosaics of a set of eval pair ids: deterministic in the ids and `cfg.seed`."""
    ordered = sorted(set(pair_ids), key=lambda pid: _order_key(cfg.seed, pid))
    low, high = tile_size // 8, tile_size - tile_size // 8
    mosaics = []
    for index, start in enumerate(range(0, len(ordered), cfg.tiles_per_mosaic)):
        group = tuple(ordered[start : start + cfg.tiles_per_mosaic])
        rng = np.random.default_rng([cfg.seed, index])
        offset = (int(rng.integers(low, high)), int(rng.integers(low, high)))
        mosaics.append(Mosaic(index, group, cols=math.ceil(math.sqrt(len(group))), offset=offset))
    return mosaics


def window_id(mosaic: Mosaic, y: int, x: int) -> str:
    """`scene<mosaic>_y<row>_x<col>`: the window's origin in mosaic pixels (may be < 0)."""
    return f"scene{mosaic.index:03d}_y{y}_x{x}"


def cut_windows(mosaic: Mosaic, tiles: dict[str, GeoPair]) -> Iterator[GeoPair]:
    """Every window of one mosaic with at least one valid pixel, as a GeoPair."""
    first = tiles[mosaic.pair_ids[0]]
    size = first.mask.shape[0]
    bands = first.image.shape[-1]
    height, width = mosaic.rows * size, mosaic.cols * size
    image = np.zeros((height, width, bands), np.float32)
    mask = np.full((height, width), F.MASK_NODATA, np.uint8)
    owner = np.full((height, width), -1, np.int32)  # which tile (index in pair_ids) is here
    for k, pid in enumerate(mosaic.pair_ids):
        tile = tiles[pid]
        if tile.mask.shape != (size, size) or tile.image.shape[-1] != bands:
            raise ValueError(
                f"scene split: tile {pid} is {tile.mask.shape[1]} x {tile.mask.shape[0]} pixels "
                f"with {tile.image.shape[-1]} bands, {first.pair_id} {size} x {size} with "
                f"{bands}: the scene split needs square tiles of one size"
            )
        r, c = mosaic.cell(k)
        cells = np.s_[r * size : (r + 1) * size, c * size : (c + 1) * size]
        image[cells], mask[cells], owner[cells] = tile.image, tile.mask, k
    for y, x in mosaic.window_origins(size):
        # Window -> mosaic overlap (the window may start before or end after the mosaic).
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, height), min(x + size, width)
        win_owner = np.full((size, size), -1, np.int32)
        win_owner[y0 - y : y1 - y, x0 - x : x1 - x] = owner[y0:y1, x0:x1]
        counts = np.bincount(win_owner[win_owner >= 0].ravel(), minlength=len(mosaic.pair_ids))
        if not counts.any():
            continue
        win_image = np.zeros((size, size, bands), np.float32)
        win_mask = np.full((size, size), F.MASK_NODATA, np.uint8)
        win_image[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
        win_mask[y0 - y : y1 - y, x0 - x : x1 - x] = mask[y0:y1, x0:x1]
        main = int(np.argmax(counts))
        geo = tiles[mosaic.pair_ids[main]]
        r, c = mosaic.cell(main)
        yield GeoPair(
            pair_id=window_id(mosaic, y, x),
            image=win_image,
            mask=win_mask,
            band_names=geo.band_names,
            crs_wkt=geo.crs_wkt,
            epsg=geo.epsg,
            transform=shifted(geo.transform, rows=y - r * size, cols=x - c * size),
        )


def shifted(transform: Sequence[float], rows: int, cols: int) -> tuple[float, ...]:
    """An affine (a, b, c, d, e, f) moved so that pixel (rows, cols) becomes the origin."""
    a, b, c, d, e, f = transform
    return (a, b, c + a * cols + b * rows, d, e, f + d * cols + e * rows)


def layout(mosaics: Sequence[Mosaic], tile_size: int, cfg: SceneConfig) -> dict:
    """What `scene_layout.json` records: the construction's parameters and every mosaic."""
    return {
        "seed": cfg.seed,
        "tiles_per_mosaic": cfg.tiles_per_mosaic,
        "tile_size": tile_size,
        "mask_nodata": F.MASK_NODATA,
        "mosaics": [m.to_dict() for m in mosaics],
    }


def write_scene_split(
    p,
    mosaics: Sequence[Mosaic],
    specs: Sequence[PairSpec],
    shard_path,
    validation: ValidationConfig,
) -> None:
    """Add the scene split to a Beam pipeline: one GZIP TFRecord shard per mosaic.

    The tiles are read again from their GeoTIFFs with the conversion's own `validate` (the same
    pixels the eval examples hold); each mosaic is one element, so mosaics are built in parallel
    and no pixels cross a shuffle. `shard_path(index, count)` names a mosaic's shard file.
    """
    by_id = {s.pair_id: s for s in specs}
    count = len(mosaics)
    _ = (
        p
        | "Mosaics" >> beam.Create(list(mosaics))
        | "Cut and write windows"
        >> beam.Map(
            _write_mosaic,
            specs={m.index: [by_id[pid] for pid in m.pair_ids] for m in mosaics},
            shard_path=shard_path,
            count=count,
            validation=validation,
        )
    )


METRICS_NAMESPACE = "tailings.scenes"
WINDOWS = "windows"


def windows_written(result) -> int:
    """How many windows a pipeline with `write_scene_split` wrote (from Beam's counters)."""
    query = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(WINDOWS)
    return int(sum(c.committed for c in result.metrics().query(query)["counters"]))


def _write_mosaic(mosaic, specs, shard_path, count, validation) -> int:
    tiles = {}
    for spec in specs[mosaic.index]:
        pair = validate(spec, validation)
        if isinstance(pair, Rejection):  # the conversion accepted it moments ago
            raise ValueError(f"scene split: {spec.pair_id} no longer valid: {pair.detail}")
        tiles[spec.pair_id] = pair
    written = 0
    with atomic_tfrecord(shard_path(mosaic.index, count)) as writer:
        for window in cut_windows(mosaic, tiles):
            writer.write(to_example(window).SerializeToString(deterministic=True))
            written += 1
    Metrics.counter(METRICS_NAMESPACE, WINDOWS).inc(written)
    return written
