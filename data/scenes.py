"""The `scene` split: each eval site merged into one real place, cut into windows that never
line up with its tiles.

The study's tiles are centred on a facility, so a model scored on whole tiles can score well by
marking the middle of the tile, and fail on a real scene, where `tailings predict` cuts windows
wherever the scene's grid puts them. And tiles are not places: tiles of one site overlap, and
each marks only its own facility. The scene split scores what a user gets on a real place:

1. Every eval site (`data.sites`: tiles whose footprints intersect) with a converted tile is
   merged onto one grid (`data.sites.merge_site`): its pixels, its label the union of its
   tiles' masks, no data (image 0, mask `MASK_NODATA`) where no tile lies. No seams between
   unrelated places: a scene is one place.
2. It is cut into tile-sized windows on a grid shifted by an offset (oy, ox) drawn from
   `numpy.random.default_rng([seed, hash(site id)])` in [size/8, 7 size/8): window edges fall
   off the tiles' edges, the windows cover every pixel of the site (the first row and column
   start before it, the last end after it), so a facility appears whole, cut by a window edge,
   off-centre, several per window, or not at all. Windows with no valid pixel are dropped.

Each window is a `tf.Example` with every feature of `schemas.features` (statistics over its
valid pixels, its site id for TFMA's slicing by site, both masks the site's union); its
georeference is the site grid's moved to the window's origin. Its pair id is
`<site id>_y<row>_x<col>` (the window's origin on the site grid, may be < 0), and `layout()`
records every site's tiles and offset (the ExampleGen writes it to `scene_layout.json`).
Everything depends only on the eval sites' tiles and the seed: the same data gives the same
split, and a site's windows do not depend on the other sites.

The tile mosaic this split used before (eval tiles of unrelated places laid side by side, each
scored with its own mask) is gone from the pipeline: it manufactured seams between places and
scored correct finds in a neighbour's facility as false positives. `plan_mosaics` and
`cut_windows` stay for `benchmarks/shift.py`, which measures window placement alone on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import Metrics, MetricsFilter

from data.config import SceneConfig, ValidationConfig
from data.convert import atomic_tfrecord
from data.examples import to_example
from data.pairs import GeoPair, PairSpec, Rejection, _natural_key, validate
from data.sites import cut_site_windows, merge_site, shifted, window_offset
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


def plan_mosaics(
    pair_ids: Sequence[str], tile_size: int, cfg: SceneConfig, tiles_per_mosaic: int = 16
) -> list[Mosaic]:
    """Mosaics of tiles of unrelated places (`benchmarks/shift.py`'s framing, no longer the
    scene split): deterministic in the ids and `cfg.seed`."""
    if tiles_per_mosaic < 1:
        raise ValueError(f"tiles_per_mosaic must be >= 1, got {tiles_per_mosaic}")
    ordered = sorted(set(pair_ids), key=lambda pid: _order_key(cfg.seed, pid))
    low, high = tile_size // 8, tile_size - tile_size // 8
    mosaics = []
    for index, start in enumerate(range(0, len(ordered), tiles_per_mosaic)):
        group = tuple(ordered[start : start + tiles_per_mosaic])
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


@dataclass(frozen=True)
class SiteScene:
    """One eval site of the scene split: its converted tiles and its window offset."""

    site_id: str
    pair_ids: tuple[str, ...]
    offset: tuple[int, int]  # (oy, ox): windows start at -oy + k * size, -ox + k * size

    def to_dict(self) -> dict:
        return {"site": self.site_id, "tiles": list(self.pair_ids), "offset": list(self.offset)}


def plan_site_scenes(
    tiles_by_site: Mapping[str, Sequence[str]], tile_size: int, cfg: SceneConfig
) -> list[SiteScene]:
    """The scene split's sites (site id -> its converted eval tiles), in site order."""
    return [
        SiteScene(
            site, tuple(sorted(ids, key=_natural_key)), window_offset(site, cfg.seed, tile_size)
        )
        for site, ids in sorted(tiles_by_site.items(), key=lambda kv: _natural_key(kv[0]))
        if ids
    ]


def scene_windows(scene: SiteScene, tiles: Sequence[GeoPair], size: int) -> Iterator[GeoPair]:
    """Every window of one site scene (`data.sites.cut_site_windows`), with its site id."""
    merged = merge_site(scene.site_id, tiles)
    for window, site_id in cut_site_windows(merged, size, scene.offset):
        yield dataclasses.replace(window, site_id=site_id, site_mask=window.mask)


def layout(scenes: Sequence[SiteScene], tile_size: int, cfg: SceneConfig) -> dict:
    """What `scene_layout.json` records: the construction's parameters and every site."""
    return {
        "seed": cfg.seed,
        "tile_size": tile_size,
        "mask_nodata": F.MASK_NODATA,
        "sites": [s.to_dict() for s in scenes],
    }


def write_scene_split(
    p,
    scenes: Sequence[SiteScene],
    specs: Sequence[PairSpec],
    shard_path,
    validation: ValidationConfig,
    tile_size: int,
) -> None:
    """Add the scene split to a Beam pipeline: one GZIP TFRecord shard per site.

    The tiles are read again from their GeoTIFFs with the conversion's own `validate` (the same
    pixels the eval examples hold); each site is one element, so sites are merged in parallel
    and no pixels cross a shuffle. `shard_path(index, count)` names a site's shard file.
    """
    by_id = {s.pair_id: s for s in specs}
    count = len(scenes)
    _ = (
        p
        | "Sites" >> beam.Create(list(enumerate(scenes)))
        | "Merge and cut windows"
        >> beam.Map(
            _write_site,
            specs={s.site_id: [by_id[pid] for pid in s.pair_ids] for s in scenes},
            shard_path=shard_path,
            count=count,
            validation=validation,
            tile_size=tile_size,
        )
    )


METRICS_NAMESPACE = "tailings.scenes"
WINDOWS = "windows"


def windows_written(result) -> int:
    """How many windows a pipeline with `write_scene_split` wrote (from Beam's counters)."""
    query = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(WINDOWS)
    return int(sum(c.committed for c in result.metrics().query(query)["counters"]))


def _write_site(indexed, specs, shard_path, count, validation, tile_size) -> int:
    index, scene = indexed
    tiles = []
    for spec in specs[scene.site_id]:
        pair = validate(spec, validation)
        if isinstance(pair, Rejection):  # the conversion accepted it moments ago
            raise ValueError(f"scene split: {spec.pair_id} no longer valid: {pair.detail}")
        tiles.append(pair)
    written = 0
    with atomic_tfrecord(shard_path(index, count)) as writer:
        for window in scene_windows(scene, tiles, tile_size):
            writer.write(to_example(window).SerializeToString(deterministic=True))
            written += 1
    Metrics.counter(METRICS_NAMESPACE, WINDOWS).inc(written)
    return written
