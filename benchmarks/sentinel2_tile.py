"""Benchmark a full Sentinel-2 tile through `tailings predict`: time and peak memory.

    .venv/bin/python benchmarks/sentinel2_tile.py --model DIR [--data DIR] [--work DIR]
        [--size 10980] [--zip] [--keep]

Builds a fake Level-1C product of `--size` x `--size` pixels at 10 m (a full tile is 10980 x
10980) from real study pixels: the study's 448 x 448 images (`<data>/img`, B2, B3, B4
reflectance) tiled side by side, quantized as ESA does from baseline 04.00 (DN = reflectance *
10000 + 1000, lossless JPEG 2000, 1024-pixel codestream tiles), with a 60 m MSK_CLASSI cloud
mask holding a few round clouds; the SAFE layout and metadata are the tests' fixture's
(`tests.fixtures.sentinel2`, ESA's format). The band files are written strip by strip through
a tiled GeoTIFF, so building the product does not hold the tile in memory either.

Then runs the real command as a user would, as one whole process (TensorFlow's import and the
model's load count):

    tailings predict <product>.SAFE --out mask.tif --polygons polygons.geojson --model DIR

and records its wall time (monotonic clock), CPU time and peak resident memory (the child's
ru_maxrss from `os.wait4`), the load average before and after, and the command's own summary
lines. Goals (issue 30): <= 10 minutes and <= 4 GB peak RSS on 2 cores. `--zip` times the same
product as a zip too. Results: `results/sentinel2_tile.json` and `results/sentinel2_tile.md`;
the numbers are only as quiet as the machine was (the load average says how busy it was).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import _env  # noqa: F401 - first: the environment, and the project on sys.path
import numpy as np
import rasterio
from _env import DEFAULT_DATA, RESULTS, ROOT
from rasterio.shutil import copy
from rasterio.transform import from_origin
from rasterio.windows import Window

from tests.fixtures.sentinel2 import (
    EPSG,
    OFFSET,
    QUANTIFICATION,
    SENSING,
    TILE_ID,
    ULX,
    ULY,
    _product_xml,
    _tile_xml,
    product_name,
)

STUDY_TILE = 448
GOAL_SECONDS = 600
GOAL_RSS_GB = 4.0
JP2_BLOCK = 1024
CLOUDS = [(0.25, 0.3, 0.04), (0.6, 0.7, 0.06), (0.8, 0.2, 0.03)]  # (row, col, radius) / size


def study_images(data: Path) -> list[np.ndarray]:
    """The study's 448 x 448 images as [3, 448, 448] float32 (img_23, 48 px wide, left out)."""
    images = []
    for path in sorted((data / "img").glob("img_*.tif")):
        with rasterio.open(path) as src:
            if (src.width, src.height) == (STUDY_TILE, STUDY_TILE):
                images.append(np.nan_to_num(src.read().astype(np.float32)))
    if not images:
        raise SystemExit(f"no 448 x 448 study images in {data / 'img'}")
    return images


def write_band_tifs(images: list[np.ndarray], size: int, tmp: Path) -> list[Path]:
    """B02, B03, B04 as tiled uint16 GeoTIFFs, one row of study images at a time."""
    paths = [tmp / f"{band}.tif" for band in ("B02", "B03", "B04")]
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{EPSG}",
        "transform": from_origin(ULX, ULY, 10, 10),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    outs = [rasterio.open(p, "w", **profile) for p in paths]
    try:
        per_row = -(-size // STUDY_TILE)
        k = 0
        for top in range(0, size, STUDY_TILE):
            h = min(STUDY_TILE, size - top)
            row = np.empty((3, h, size), dtype=np.uint16)
            for j in range(per_row):
                left = j * STUDY_TILE
                w = min(STUDY_TILE, size - left)
                image = images[k % len(images)]
                k += 1
                dn = np.rint(image[:, :h, :w] * QUANTIFICATION) - OFFSET
                row[:, :, left : left + w] = np.clip(dn, 1, 65534).astype(np.uint16)
            for i, out in enumerate(outs):
                out.write(row[i], 1, window=Window(0, top, size, h))
    finally:
        for out in outs:
            out.close()
    return paths


def build_product(data: Path, work: Path, size: int) -> tuple[Path, bool]:
    """The fake L1C product (baseline 05.09) under `work`: (its SAFE folder, whether it was
    built now; one already there, from an earlier run with the same --work, is reused)."""
    name = product_name("L1C", "05.09")
    safe = work / f"{name}.SAFE"
    if (safe / "MTD_MSIL1C.xml").is_file():
        with rasterio.open(next((safe / "GRANULE").glob("*/IMG_DATA/*_B02.jp2"))) as src:
            if (src.width, src.height) == (size, size):
                return safe, False
        raise SystemExit(f"{safe}: a product of another size is there; remove it or use --work")
    granule = f"L1C_{TILE_ID}_A033753_{SENSING}"
    gdir = safe / "GRANULE" / granule
    (gdir / "IMG_DATA").mkdir(parents=True, exist_ok=True)
    (gdir / "QI_DATA").mkdir(parents=True, exist_ok=True)
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tifs = write_band_tifs(study_images(data), size, tmp)
    image_files = []
    for band, tif in zip(("B02", "B03", "B04"), tifs, strict=True):
        rel = f"GRANULE/{granule}/IMG_DATA/{TILE_ID}_{SENSING}_{band}"
        image_files.append(rel)
        copy(
            tif,
            safe / f"{rel}.jp2",
            driver="JP2OpenJPEG",
            QUALITY=100,
            REVERSIBLE="YES",
            BLOCKXSIZE=JP2_BLOCK,
            BLOCKYSIZE=JP2_BLOCK,
        )
        (safe / f"{rel}.jp2.aux.xml").unlink(missing_ok=True)
        tif.unlink()
    n = -(-size // 6)
    yy, xx = np.mgrid[0:n, 0:n] / n
    opaque = np.zeros((n, n), dtype=bool)
    for cy, cx, r in CLOUDS:
        opaque |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    classi = np.stack([opaque, np.zeros_like(opaque), np.zeros_like(opaque)]).astype(np.uint8)
    mask_tif = tmp / "classi.tif"
    with rasterio.open(
        mask_tif, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8",
        crs=f"EPSG:{EPSG}", transform=from_origin(ULX, ULY, 60, 60),
    ) as dst:  # fmt: skip
        dst.write(classi)
    copy(mask_tif, gdir / "QI_DATA" / "MSK_CLASSI_B00.jp2", driver="JP2OpenJPEG",
         QUALITY=100, REVERSIBLE="YES")  # fmt: skip
    (gdir / "QI_DATA" / "MSK_CLASSI_B00.jp2.aux.xml").unlink(missing_ok=True)
    shutil.rmtree(tmp)
    (gdir / "MTD_TL.xml").write_text(
        _tile_xml("L1C", "05.09", size, size, EPSG, granule, True), encoding="utf-8"
    )
    (safe / "MTD_MSIL1C.xml").write_text(
        _product_xml("L1C", "05.09", name, None, image_files, OFFSET), encoding="utf-8"
    )
    print(f"built {safe} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return safe, True


def zip_safe(safe: Path) -> Path:
    import zipfile

    out = safe.with_suffix(".zip")
    if not out.is_file():
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for path in sorted(safe.rglob("*")):
                z.write(path, path.relative_to(safe.parent).as_posix())
    return out


def run_predict(product: Path, model: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tailings", "predict", str(product), "--out",
            str(out / "mask.tif"), "--polygons", str(out / "polygons.geojson"),
            "--model", str(model)]  # fmt: skip
    load_before = os.getloadavg()
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    lines = [line for line in stderr.splitlines() if not line.startswith("  rows ")]
    return {
        "product": product.name,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),  # ru_maxrss: KiB on Linux
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "lines": lines[-12:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-sentinel2")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--zip", action="store_true", help="also time the product as a zip")
    parser.add_argument("--keep", action="store_true", help="keep the product and outputs")
    parser.add_argument("--note", default="", help="said in the results (e.g. how busy)")
    parser.add_argument(
        "--build-only", action="store_true", help="build the product into --work and stop"
    )
    args = parser.parse_args()

    started = time.monotonic()
    safe, built = build_product(args.data, args.work, args.size)
    build_s = time.monotonic() - started
    if args.build_only:
        print(safe)
        return 0
    products = [safe] + ([zip_safe(safe)] if args.zip else [])
    runs = [run_predict(p, args.model, args.work / f"out-{p.suffix[1:]}") for p in products]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "size": args.size,
        "model": str(args.model),
        "build_s": round(build_s, 1) if built else None,  # None: an earlier run's product
        "goals": {"wall_s": GOAL_SECONDS, "peak_rss_gb": GOAL_RSS_GB},
        "note": args.note,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sentinel2_tile.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {Path(r['product']).suffix} | {r['exit_code']} | {r['wall_s']:.0f} s "
        f"({r['wall_s'] / 60:.1f} min) | {r['cpu_s']:.0f} s | {r['peak_rss_gb']:.2f} GB | "
        f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
        for r in runs
    )
    said = "\n".join(f"    {line}" for r in runs for line in r["lines"])
    (RESULTS / "sentinel2_tile.md").write_text(
        f"# A full Sentinel-2 tile through `tailings predict` ({result['date']})\n\n"
        f"Fake L1C product, baseline 05.09, {args.size} x {args.size} pixels at 10 m, built "
        "from the study's images "
        + (f"in {build_s:.0f} s" if built else "by an earlier run of the script")
        + f" (`benchmarks/sentinel2_tile.py`); model "
        f"`{args.model}`; {os.cpu_count()} CPUs. Goals: <= {GOAL_SECONDS / 60:.0f} min, "
        f"<= {GOAL_RSS_GB:g} GB peak RSS.\n\n{args.note}\n\n"
        "| input | exit | wall | CPU | peak RSS | load avg (1 min) before / after |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n\nWhat the command said:\n\n{said}\n"
    )
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
