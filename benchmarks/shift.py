"""The shift curve: how a model's quality depends on where the tailings sit in its window.

    .venv/bin/python benchmarks/shift.py \
        --model old_default=/work/runs/c/pipeline/Trainer/model/8/Format-Serving
    .venv/bin/python benchmarks/shift.py --model new=serving/models/tailings \
        [--model NAME=DIR ...] [--data DIR] [--out FILE] [--batch 4] [--overlaps 0,64,128]

The study's tiles are each centred on a mining facility, so a model can score well on them by
marking the middle of the window. This measures how much of its score that is:

- **shift curve**: each eval tile (the pipeline's eval split, loaded by `quality.load`) is
  mirrored into surroundings (`np.pad(mode="symmetric")` by one tile on every side) and a
  tile-sized window is cut with its origin moved by d pixels from the tile's own, for
  d in `SHIFTS`, in the four diagonal directions (d = 0 once). The mask moves with the image,
  so the labels stay right; only the tailings' place in the window changes. Per d: pooled IoU
  of the tailings class (intersection sum / union sum over all windows' pixels), pixel
  accuracy, all-background accuracy, and the mean per-window IoU (a window whose prediction
  and mask are both empty counts as 1.0);
- **scene windows**: the pipeline's `scene` split built in memory from the same eval tiles
  (`data.scenes.plan_mosaics` + `cut_windows`): pooled IoU, pixel accuracy and all-background
  accuracy over valid pixels (mask != `MASK_NODATA`), and the number of windows (checked
  against `STUDY_SCENE_WINDOWS` on the shared data). Since sites, the pipeline's scene split
  is each eval site merged (`data.scenes.scene_windows`); these tile mosaics are kept here to
  measure window placement alone, comparable with the figures before sites;
- **whole mosaics by overlap** (`--overlaps`, default 0,64,128; "" skips it): the same
  mosaics, each written whole as a GeoTIFF and predicted by `serving.predict.predict_scene`
  with `LocalModel.open(DIR)`: the code `tailings predict --model DIR` runs, sliding windows
  blended across each overlap. Empty grid cells are NaN (nodata NaN), so the output marks
  them no data, as are margins of the mosaic's window offset (oy, ox) above and left and up
  to whole tiles below and right: they put the window grid where the scene split puts it, so
  overlap 0 cuts exactly the scene windows (its score checks the two paths against each
  other), not the facility-centred tiles themselves (which a grid starting at the mosaic's
  corner would cut at overlap 0). Per overlap: pooled IoU, pixel accuracy and all-background
  accuracy of the output mask against the mosaics' masks on valid pixels, the number of
  windows, and `predict_scene`'s seconds (writing its mask COG included).

Models are called through their `predict_image` signature (float32 reflectance in; the
Transform's normalisation and the model's test-time augmentation are inside), thresholded at
0.5; the whole mosaics go through `serving_default`, as `tailings predict` sends them, at the
same threshold. `--model NAME=DIR` is repeatable; DIR is a SavedModel folder or a model base
folder (its newest numeric version). Results go to benchmarks/results/shift.{json,md}, merged
by NAME with what the JSON already holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _env import DEFAULT_DATA, RESULTS, ROOT  # sets the environment first

from schemas.features import MASK_NODATA

DEFAULT_OUT = RESULTS / "shift.json"
SHIFTS = (0, 64, 128, 224)
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1))  # (rows, columns)
RATIOS = (128, 224)  # reported as IoU(d) / IoU(0)
THRESHOLD = 0.5
BATCH = 4
# The tile mosaics of the shared data's 11 eval tiles (by-site split) cut into 19 windows (29 from
# the 17 eval tiles of the data before sites, when the pipeline's scene split was these mosaics).
STUDY_SCENE_WINDOWS = 19
QUIET_LOAD_PER_CPU = 0.25  # 1-minute load average per CPU below which the machine was quiet
OVERLAPS = (0, 64, 128)  # `tailings predict --overlap` values scored on whole mosaics
# Any valid georeference will do (only pixels are scored): UTM 23S, 10 m pixels, near the study.
MOSAIC_CRS = "EPSG:32723"
MOSAIC_ORIGIN = (600000.0, 7700000.0)  # west, north (metres)
MOSAIC_PIXEL_METRES = 10.0

Predict = Callable[[np.ndarray], np.ndarray]  # [N,H,W,3] float32 -> [N,H,W,1] probabilities


# ---------------------------------------------------------------- window arithmetic (numpy)
def offsets(d: int) -> list[tuple[int, int]]:
    """The (rows, columns) shifts of the window origin for distance d (one for d = 0)."""
    return [(0, 0)] if d == 0 else [(sy * d, sx * d) for sy, sx in DIRECTIONS]


def mirrored(array: np.ndarray, tile: int) -> np.ndarray:
    """The array mirrored by `tile` pixels on every side of its first two axes (3T x 3T)."""
    pad = [(tile, tile), (tile, tile)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="symmetric")


def shifted_windows(
    image: np.ndarray, mask: np.ndarray, d: int
) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
    """(offset, image window, mask window) for each offset of `offsets(d)`.

    The tile sits at (T, T) of its mirrored canvas; a window starts at (T + dy, T + dx).
    """
    tile = image.shape[0]
    if image.shape[:2] != (tile, tile) or mask.shape[:2] != (tile, tile):
        raise ValueError(f"need square tiles of one size, got {image.shape} and {mask.shape}")
    if not 0 <= d <= tile:
        raise ValueError(f"shift {d} outside 0..{tile}: the window would leave the canvas")
    canvas_image, canvas_mask = mirrored(image, tile), mirrored(mask, tile)
    out = []
    for dy, dx in offsets(d):
        y, x = tile + dy, tile + dx
        out.append(
            (
                (dy, dx),
                canvas_image[y : y + tile, x : x + tile],
                canvas_mask[y : y + tile, x : x + tile],
            )
        )
    return out


@dataclasses.dataclass
class Tally:
    """Pixel counts pooled over windows (tailings = class 1), and each window's own IoU."""

    intersection: int = 0
    union: int = 0
    correct: int = 0
    background: int = 0  # valid pixels whose truth is background
    pixels: int = 0  # valid pixels
    window_ious: list[float] = dataclasses.field(default_factory=list)

    def add(self, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None):
        """One window: boolean predicted / truth arrays of one shape, optional valid pixels."""
        if valid is None:
            valid = np.ones(truth.shape, bool)
        predicted, truth = predicted & valid, truth & valid
        inter = int(np.sum(predicted & truth))
        union = int(np.sum(predicted | truth))
        self.intersection += inter
        self.union += union
        self.correct += int(np.sum((predicted == truth) & valid))
        self.background += int(np.sum(~truth & valid))
        self.pixels += int(np.sum(valid))
        self.window_ious.append(inter / union if union else 1.0)

    def scores(self) -> dict[str, float | int]:
        pixels = max(self.pixels, 1)
        return {
            "iou": self.intersection / self.union if self.union else 1.0,
            "pixel_accuracy": self.correct / pixels,
            "all_background_accuracy": self.background / pixels,
            "mean_window_iou": float(np.mean(self.window_ious)) if self.window_ious else 1.0,
            "windows": len(self.window_ious),
            "pixels": self.pixels,
        }


def pooled_scores(
    probabilities: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> dict[str, float | int]:
    """`Tally.scores` of a stack of windows [N, ...] at THRESHOLD (truth: bool or 0/1)."""
    tally = Tally()
    for k in range(len(probabilities)):
        tally.add(
            probabilities[k] >= THRESHOLD,
            truth[k].astype(bool),
            None if valid is None else valid[k],
        )
    return tally.scores()


def ratio(iou: float, base: float) -> float | None:
    return iou / base if base > 0 else None


# ---------------------------------------------------------------- prediction
def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def open_model(version_dir: Path) -> Predict:
    """The SavedModel's `predict_image` signature as a numpy function."""
    import tensorflow as tf

    from components.warmup import IMAGES_INPUT, PREDICT_IMAGE, PROBABILITIES

    loaded = tf.saved_model.load(str(version_dir), tags=["serve"])
    if PREDICT_IMAGE not in loaded.signatures:
        raise SystemExit(f"{version_dir}: no {PREDICT_IMAGE!r} signature (old export?)")
    function = loaded.signatures[PREDICT_IMAGE]

    def predict(images: np.ndarray) -> np.ndarray:
        out = function(**{IMAGES_INPUT: tf.constant(images, tf.float32)})[PROBABILITIES]
        return out.numpy()

    predict.handle = loaded  # keep the variables alive
    return predict


def shift_curve(predict: Predict, images: np.ndarray, masks: np.ndarray, batch: int) -> dict:
    """Scores per shift d over every eval tile's shifted windows (masks [N,H,W,1] 0/1)."""
    out = {}
    for d in SHIFTS:
        started = time.monotonic()
        tally = Tally()
        windows = (w for k in range(len(images)) for w in shifted_windows(images[k], masks[k], d))
        for group in batched(windows, batch):
            probabilities = predict(np.stack([image for _, image, _ in group]))
            for (_, _, mask), p in zip(group, probabilities, strict=True):
                tally.add(p[..., 0] >= THRESHOLD, mask[..., 0] > 0.5)
        out[str(d)] = tally.scores()
        s = out[str(d)]
        print(
            f"  shift {d:3d} px: {s['windows']:3d} windows, IoU {s['iou']:.3f}, pixel accuracy "
            f"{s['pixel_accuracy']:.3f}, mean window IoU {s['mean_window_iou']:.3f} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    return out


def score_scene(predict: Predict, windows: list, batch: int) -> dict:
    tally = Tally()
    for group in batched(windows, batch):
        probabilities = predict(np.stack([w.image for w in group]))
        for w, p in zip(group, probabilities, strict=True):
            valid = w.mask != MASK_NODATA
            tally.add(p[..., 0] >= THRESHOLD, w.mask == 1, valid)
    return tally.scores()


# ---------------------------------------------------------------- whole mosaics
def parse_overlaps(text: str) -> tuple[int, ...]:
    """`--overlaps`: comma-separated pixels, e.g. "0,64,128"; "" for none."""
    try:
        overlaps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole pixels, e.g. 0,64,128") from None
    if any(o < 0 for o in overlaps) or len(set(overlaps)) != len(overlaps):
        raise argparse.ArgumentTypeError(f"{text!r}: overlaps must be distinct and >= 0")
    return overlaps


def mosaic_pixels(mosaic, tiles: dict) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic as `tailings predict` gets it: image [H, W, 3] and mask [H, W] (uint8).

    The tiles sit on their grid as `data.scenes.cut_windows` lays them out, shifted down and
    right by the mosaic's window offset (oy, ox), and the whole is padded to whole tiles, so
    windows starting at 0, size, 2 size, ... are the scene split's windows. Empty grid cells
    and the margins are no data: NaN in the image, `MASK_NODATA` in the mask.
    """
    first = tiles[mosaic.pair_ids[0]]
    size, bands = first.mask.shape[0], first.image.shape[-1]
    oy, ox = mosaic.offset
    height = -(-(oy + mosaic.rows * size) // size) * size
    width = -(-(ox + mosaic.cols * size) // size) * size
    image = np.full((height, width, bands), np.nan, np.float32)
    mask = np.full((height, width), MASK_NODATA, np.uint8)
    for k, pid in enumerate(mosaic.pair_ids):
        r, c = mosaic.cell(k)
        cells = np.s_[oy + r * size : oy + (r + 1) * size, ox + c * size : ox + (c + 1) * size]
        image[cells], mask[cells] = tiles[pid].image, tiles[pid].mask
    return image, mask


def write_mosaic(path: Path, image: np.ndarray) -> Path:
    """[H, W, 3] float32 reflectance as a 3-band GeoTIFF (B2, B3, B4) with nodata NaN."""
    import rasterio
    from rasterio.transform import from_origin

    height, width, bands = image.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": "float32",
        "crs": MOSAIC_CRS,
        "transform": from_origin(*MOSAIC_ORIGIN, MOSAIC_PIXEL_METRES, MOSAIC_PIXEL_METRES),
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
        for i, name in enumerate(("B2", "B3", "B4")[:bands]):
            dst.set_band_description(i + 1, name)
    return path


def predict_by_overlap(
    model, mosaics: list, tiles: dict, overlaps: Iterable[int], batch: int, folder: Path
) -> dict:
    """Scores of `predict_scene`'s masks of every whole mosaic, per overlap (see the doc)."""
    import rasterio

    from serving.config import PredictConfig
    from serving.predict import MASK_NODATA as OUTPUT_NODATA
    from serving.predict import predict_scene

    scenes = []
    for mosaic in mosaics:
        image, truth = mosaic_pixels(mosaic, tiles)
        scenes.append((write_mosaic(folder / f"mosaic{mosaic.index:03d}.tif", image), truth))
    out = {}
    for overlap in overlaps:
        cfg = PredictConfig(tile=model.tile, overlap=overlap, threshold=THRESHOLD, batch_size=batch)
        tally, windows, seconds = Tally(), 0, 0.0
        for path, truth in scenes:
            out_mask = folder / f"{path.stem}-mask-{overlap}.tif"
            result = predict_scene(path, model, out_mask, cfg)
            windows += result.windows
            seconds += result.seconds
            with rasterio.open(out_mask) as src:
                predicted = src.read(1)
            out_mask.unlink()
            valid = truth != MASK_NODATA
            if not np.array_equal(predicted != OUTPUT_NODATA, valid):
                raise RuntimeError(
                    f"{path}: predict_scene's no data differs from the mosaic's "
                    f"({int(np.sum((predicted != OUTPUT_NODATA) != valid))} pixels)"
                )
            tally.add(predicted == 1, truth == 1, valid)
        scores = tally.scores()
        out[str(overlap)] = {
            "iou": scores["iou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "all_background_accuracy": scores["all_background_accuracy"],
            "pixels": scores["pixels"],
            "mosaics": len(scenes),
            "windows": windows,
            "seconds": round(seconds, 1),
        }
        print(
            f"  whole mosaics, overlap {overlap:3d}: {windows} windows, IoU {scores['iou']:.3f}, "
            f"pixel accuracy {scores['pixel_accuracy']:.3f} ({seconds:.0f} s)",
            flush=True,
        )
    return out


# ---------------------------------------------------------------- results
def machine() -> dict:
    load = os.getloadavg()
    cpus = os.cpu_count() or 1
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": cpus,
        "load_average": [round(v, 2) for v in load],
        "quiet": load[0] < QUIET_LOAD_PER_CPU * cpus,
    }


def git(*command: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *command], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    """`git rev-parse --short HEAD`, with `+dirty` when tracked files have changes."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + "+dirty" if git("status", "--porcelain", "--untracked-files=no") else commit


def merged(out: Path, entries: dict[str, dict]) -> dict:
    """The JSON already at `out` (if any) with these models' entries added or replaced."""
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("models", {}).update(entries)
    results["shifts"] = list(SHIFTS)
    results["threshold"] = THRESHOLD
    return results


def markdown(results: dict) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    shifts = results.get("shifts", list(SHIFTS))
    lines = [
        "# Shift curve: quality by where the tailings sit in the window",
        "",
        "Made by `benchmarks/shift.py`. IoU of the tailings class at threshold "
        f"{results.get('threshold', THRESHOLD)}, pooled over all windows' pixels. Shift d: the "
        "eval tiles, mirrored into surroundings, cut with the window origin moved by d pixels "
        "diagonally (4 directions). Scene: the pipeline's scene windows (eval tiles mosaicked, "
        "cut off their grid), valid pixels only.",
        "",
        "| model | "
        + " | ".join(f"IoU {d}" for d in shifts)
        + " | IoU 128/0 | scene IoU | scene pixel acc. | scene all-background acc. |",
        "|---" * (len(shifts) + 5) + "|",
    ]
    for name, entry in results["models"].items():
        curve, scene = entry["shift_curve"], entry["scene"]
        cells = [cell(curve[str(d)]["iou"]) if str(d) in curve else "-" for d in shifts]
        cells += [
            cell(entry["ratios"].get("128")),
            cell(scene["iou"]),
            cell(scene["pixel_accuracy"]),
            cell(scene["all_background_accuracy"]),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | commit | date | seconds | quiet (load) | model dir |",
        "|---" * 6 + "|",
    ]
    for name, entry in results["models"].items():
        m = entry["machine"]
        lines.append(
            f"| {name} | `{entry['commit']}` | {entry['date']} | {entry['seconds']} | "
            f"{'yes' if m['quiet'] else 'no'} ({m['load_average'][0]}) | `{entry['model_dir']}` |"
        )
    lines += [
        "",
        "Mean per-window IoU (a window with neither predicted nor true tailings counts as "
        "1.0) and pixel accuracy per shift are in the JSON.",
    ]
    by_overlap = {
        name: entry["predict_by_overlap"]
        for name, entry in results["models"].items()
        if entry.get("predict_by_overlap")
    }
    if by_overlap:
        lines += [
            "",
            "## `tailings predict` on the whole mosaics, by overlap",
            "",
            "The scene split's mosaics, each a GeoTIFF (empty cells and margins no data), "
            "predicted by `serving.predict.predict_scene` (`LocalModel`, windows blended "
            "across the overlap). The margins put the window grid where the scene split "
            "puts it, so overlap 0 cuts the scene windows above. Pooled over the mosaics' "
            "valid pixels.",
            "",
            "| model | overlap | windows | IoU | pixel acc. | all-background acc. | seconds |",
            "|---" * 7 + "|",
        ]
        for name, rows in by_overlap.items():
            for overlap, s in rows.items():
                lines.append(
                    f"| {name} | {overlap} | {s['windows']} | {cell(s['iou'])} | "
                    f"{cell(s['pixel_accuracy'])} | {cell(s['all_background_accuracy'])} | "
                    f"{s['seconds']} |"
                )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with img/ and mask/")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="repeatable; DIR a SavedModel or a model base folder (newest numeric version)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; the .md goes beside it")
    p.add_argument("--batch", type=int, default=BATCH, help="windows per model call")
    p.add_argument(
        "--overlaps",
        type=parse_overlaps,
        default=OVERLAPS,
        metavar="PX,PX",
        help="tailings predict overlaps to score on the whole mosaics (default: "
        + ",".join(map(str, OVERLAPS))
        + '; "" skips them)',
    )
    p.add_argument(
        "--expect-scene-windows",
        type=int,
        default=None,
        metavar="N",
        help=f"fail unless the tile mosaics have N windows (default: {STUDY_SCENE_WINDOWS} "
        "when --data is the shared study folder; else no check)",
    )
    args = p.parse_args(argv)
    if args.expect_scene_windows is None and args.data.resolve() == DEFAULT_DATA.resolve():
        args.expect_scene_windows = STUDY_SCENE_WINDOWS
    for sub in ("img", "mask"):
        if not (args.data / sub).is_dir():
            p.error(f"--data {args.data}: no {sub}/ folder (set --data or TAILINGS_REAL_DATA)")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    from serving.predict import PredictError, find_version_dir

    args.models = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            p.error(f"--model {item}: give NAME=DIR")
        if name in args.models:
            p.error(f"--model {item}: name {name!r} given twice")
        try:
            args.models[name] = find_version_dir(Path(folder))
        except PredictError as err:
            p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from quality import load

    from components.cross_validation import mosaic_plan
    from data.scenes import cut_windows

    _, evaluation = load(args.data)
    if not evaluation.ids:
        print(f"{args.data}: no eval pairs", file=sys.stderr)
        return 2
    mosaics, tiles = mosaic_plan(evaluation)
    windows = [window for mosaic in mosaics for window in cut_windows(mosaic, tiles)]
    print(f"{len(evaluation.ids)} eval tiles, {len(windows)} scene windows")
    size = evaluation.images.shape[1]
    too_wide = [o for o in args.overlaps if o >= size]
    if too_wide:
        print(f"error: --overlaps {too_wide}: must be below the tile, {size}", file=sys.stderr)
        return 2
    expected = args.expect_scene_windows
    if expected is not None and len(windows) != expected:
        print(
            f"error: {len(windows)} mosaic windows, {expected} expected for this data: "
            "the mosaics no longer match the ones measured before",
            file=sys.stderr,
        )
        return 1
    entries = {}
    for name, folder in args.models.items():
        host = machine()  # load average before this model's work starts
        started = time.monotonic()
        print(f"{name}: {folder}", flush=True)
        predict = open_model(folder)
        curve = shift_curve(predict, evaluation.images, evaluation.masks, args.batch)
        scene = score_scene(predict, windows, args.batch)
        print(
            f"  scene windows: {scene['windows']}, IoU {scene['iou']:.3f}, pixel accuracy "
            f"{scene['pixel_accuracy']:.3f} (all background {scene['all_background_accuracy']:.3f})"
        )
        by_overlap = None
        if args.overlaps:
            from serving.predict import LocalModel

            model = LocalModel.open(folder)
            with tempfile.TemporaryDirectory(prefix="shift-mosaics-") as tmp:
                by_overlap = predict_by_overlap(
                    model, mosaics, tiles, args.overlaps, args.batch, Path(tmp)
                )
            del model
        base = curve["0"]["iou"]
        entries[name] = {
            "model_dir": str(folder),
            "data": str(args.data),
            "eval_tiles": len(evaluation.ids),
            "commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": host,
            "seconds": round(time.monotonic() - started, 1),
            "shift_curve": curve,
            "ratios": {str(d): ratio(curve[str(d)]["iou"], base) for d in RATIOS},
            "scene": scene,
            "scene_windows_expected": expected,
        }
        if by_overlap is not None:
            entries[name]["predict_by_overlap"] = by_overlap
    results = merged(args.out, entries)
    table = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
