"""Sliding windows over a scene and their blending: the one prediction code path of
`tailings predict` (`serving.predict`, scenes streamed from GeoTIFFs strip by strip) and of the
pipeline's ScenePredictor (`components.scene_predictor`, eval sites held in memory), so the
Evaluator scores exactly what a user gets from a scene.

Windows of `tile` pixels step by `tile - overlap`; the last window of a row or column is aligned
to the scene's edge, and scenes smaller than a tile are padded (mirrored). Each window's
probabilities are weighted so that, inside an overlap, the window whose border is farther away
answers (`blend_weights`: a cross-fade over the middle of the overlap), and every pixel is the
weighted mean of the windows covering it, so no window's weak border shows as a seam.

Hand-written: rasterio and GDAL cut windows but do not blend model outputs, and the windowed
samplers of torchgeo or raster-vision would bring a second framework for forty lines of numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Pixels shared by neighbouring windows. The mosaic-trained model on the scene mosaics, IoU by
# overlap 0/64/128/192: 0.220/0.237/0.243/0.236 (benchmarks/results/shift.md, docs/framing.md).
DEFAULT_OVERLAP = 128

# Share of the overlap, at each window edge, that a neighbouring window answers instead: a
# network is worst at its input's border (zero padding, context cut off). Two windows that
# overlap by `overlap` cross-fade over the middle quarter of it, so each pixel of the overlap
# is answered by a window that sees at least 3/8 * overlap pixels of context beyond it.
BLEND_MARGIN = 3 / 8
EDGE_WEIGHT = 1e-3  # not 0: a scene's own border is covered by one window only

# A model as both paths call it: [n, tile, tile, 3] reflectance -> [n, tile, tile] probabilities.
WindowModel = Callable[[np.ndarray], np.ndarray]


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride`, the last one flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """[tile, tile] weights: 1 inside; across the `overlap` at each edge, ~0 for the outer
    3/8 of it, a linear ramp over the middle quarter, 1 beyond.

    A plain linear ramp over the whole overlap kept a seam: mid-overlap both windows answer
    from near their borders, so any mix of the two is as wrong as either (measured with a
    border-damped model: off by 0.31 at overlap 64; 0.007 with the margin at overlap 128).
    """
    if overlap == 0:
        return np.ones((tile, tile), dtype=np.float32)
    margin = int(BLEND_MARGIN * overlap)
    fade = max(overlap - 2 * margin, 1)
    ramp = np.clip((np.arange(tile) + 0.5 - margin) / fade, EDGE_WEIGHT, 1.0)
    ramp = np.minimum(ramp, ramp[::-1])
    return np.outer(ramp, ramp).astype(np.float32)


def pad_strip(strip: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror-pad an [h, w, 3] strip up to [height, width, 3] (scenes smaller than a tile)."""
    pad_h, pad_w = height - strip.shape[0], width - strip.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return strip
    return np.pad(strip, ((0, max(pad_h, 0)), (0, max(pad_w, 0)), (0, 0)), mode="symmetric")


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def strip_tiles(strip: np.ndarray, cols: Sequence[int], tile: int) -> np.ndarray:
    """[len(cols), tile, tile, 3]: the windows starting at `cols` along a strip."""
    return np.stack([strip[:, x : x + tile] for x in cols])


@dataclass(frozen=True)
class Grid:
    """Where the windows of a scene start: `rows` x `cols` offsets (`window_starts`)."""

    height: int
    width: int
    tile: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def of(cls, height: int, width: int, tile: int, overlap: int) -> Grid:
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
        stride = tile - overlap
        return cls(
            height,
            width,
            tile,
            overlap,
            tuple(window_starts(height, tile, stride)),
            tuple(window_starts(width, tile, stride)),
        )

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.tile)

    def bottom(self, k: int) -> int:
        """The first row of window row k+1 (or the scene's height): where strip k's rows end."""
        return self.rows[k + 1] if k + 1 < len(self.rows) else self.height


class StripBlender:
    """Blends the windows of a scene one row of windows (a strip) at a time, so memory stays at
    one strip of accumulators whatever the scene's height.

    `add(k, probabilities)` takes row k's windows (left to right) and returns the blended
    probabilities of the scene rows `grid.rows[k]` .. `grid.bottom(k) - 1`, which no later
    window touches: rows must come in order.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.weight = blend_weights(grid.tile, grid.overlap)
        self._total = np.zeros((grid.tile, grid.padded_width), dtype=np.float64)
        self._weights = np.zeros_like(self._total)
        self._next = 0

    def add(self, k: int, probabilities: Sequence[np.ndarray]) -> np.ndarray:
        grid, tile = self.grid, self.grid.tile
        if k != self._next:
            raise ValueError(f"window row {k} given, row {self._next} expected")
        if len(probabilities) != len(grid.cols):
            raise ValueError(
                f"{len(probabilities)} windows answered in row {k}, {len(grid.cols)} expected"
            )
        for x, p in zip(grid.cols, probabilities, strict=True):
            self._total[:, x : x + tile] += np.asarray(p, dtype=np.float64) * self.weight
            self._weights[:, x : x + tile] += self.weight
        done = grid.bottom(k) - grid.rows[k]
        blended = (self._total[:done, : grid.width] / self._weights[:done, : grid.width]).astype(
            np.float32
        )
        # Slide the accumulators down to the next strip's first row.
        self._total = np.roll(self._total, -done, axis=0)
        self._weights = np.roll(self._weights, -done, axis=0)
        self._total[tile - done :] = 0.0
        self._weights[tile - done :] = 0.0
        self._next += 1
        return blended


def array_strips(image: np.ndarray, grid: Grid) -> Iterator[tuple[int, np.ndarray]]:
    """For each row k of windows of an in-memory [H, W, 3] scene: (k, its [tile, >= tile, 3]
    strip, mirrored up to a tile where the scene is smaller), as `serving.predict.read_strips`
    reads them from a file."""
    for k, top in enumerate(grid.rows):
        strip = image[top : top + grid.tile]
        yield k, pad_strip(strip, grid.tile, grid.padded_width)


def blend_scene(
    image: np.ndarray,
    model: WindowModel,
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
) -> np.ndarray:
    """[H, W] blended probabilities of an in-memory [H, W, 3] scene (no data as 0, as
    `serving.predict.read_strips` gives it), window by window, as `tailings predict` does."""
    height, width = image.shape[:2]
    grid = Grid.of(height, width, tile, overlap)
    blender = StripBlender(grid)
    out = np.empty((height, width), dtype=np.float32)
    for k, strip in array_strips(np.asarray(image, dtype=np.float32), grid):
        answers: list[np.ndarray] = []
        for batch in batches(list(grid.cols), batch_size):
            answers.extend(model(strip_tiles(strip, batch, tile)))
        out[grid.rows[k] : grid.bottom(k)] = blender.add(k, answers)
    return out
