"""Fleet prediction: many scenes, the model loaded once, per-scene outputs and one summary.

`tailings predict SCENE... --out-dir DIR` expands its arguments (files, folders, glob patterns)
into scenes, checks every scene's header before the model loads (`inspect_scene`), predicts
each with `predict_scene` (the single-scene code, unchanged), and writes into DIR:

- `<name>.mask.tif` per scene, and with the flags `<name>.probabilities.tif` and
  `<name>.polygons.geojson` (`<name>` is the scene's file name without its suffix; scenes of
  the same name in different folders get their folders in the name, `a__scene`, `b__scene`);
- `summary.csv` and `summary.geojson`: one row / feature per scene (its footprint in WGS 84):
  status, error, CRS, size, windows, tailings pixels, hectares, share of the area with data.
  Both are rewritten after every scene, so a stopped job leaves a summary of what it did.

A scene that fails (its header, a read error, a full disk) is a row with status `failed` and
the one-line error; its outputs are removed and the next scene runs. `FleetRecord`s are plain
JSON, so the Beam pipeline (`serving.fleet_beam`) hands its results back through a file and
the same `write_summary` writes them.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data.errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED, TailingsError
from data.geo import SQUARE_METRES_PER_HECTARE
from serving.config import PredictConfig
from serving.predict import (
    WGS84,
    PredictError,
    SceneInfo,
    SceneResult,
    TileModel,
    inspect_scene,
    predict_scene,
    resolution_warning,
    scene_windows,
)

SCENE_SUFFIXES = (".tif", ".tiff", ".zip")  # .zip: a Sentinel-2 product
GLOB_CHARACTERS = frozenset("*?[")
SUMMARY_CSV = "summary.csv"
SUMMARY_GEOJSON = "summary.geojson"
OK = "ok"
FAILED = "failed"
# Footprints: points per edge of a scene's outline before it goes to WGS 84, so that a UTM
# scene's straight edges stay within a few metres of their true, slightly curved, place.
FOOTPRINT_POINTS_PER_EDGE = 16


# --------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneJob:
    """One scene of a fleet and the name its outputs carry in the output folder."""

    path: Path
    name: str

    def mask(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}.mask.tif"

    def probabilities(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}.probabilities.tif"

    def polygons(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}.polygons.geojson"


def is_pattern(argument: str) -> bool:
    return any(c in GLOB_CHARACTERS for c in argument)


def _is_scene_dir(path: Path) -> bool:
    """A folder that is one scene: a Sentinel-2 SAFE folder or a folder of its band files."""
    from serving.sentinel2 import is_product

    return path.is_dir() and is_product(path)


def find_scenes(arguments: Sequence[str]) -> tuple[list[Path], list[FleetRecord]]:
    """Scenes from paths, folders (their *.tif / *.tiff / *.zip and SAFE folders, not
    recursive; a SAFE folder or a folder of band files is one scene itself) and glob patterns
    (`**` recurses), in argument order, each folder's or pattern's scenes sorted, every scene
    once. An argument that names nothing is a failed record, so the others still run."""
    found: list[Path] = []
    seen: set[Path] = set()
    missing: list[FleetRecord] = []
    for argument in arguments:
        path = Path(argument)
        if _is_scene_dir(path):
            files = [path]
            reason = ""
        elif path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if (p.is_file() and p.suffix.lower() in SCENE_SUFFIXES) or _is_scene_dir(p)
            )
            reason = f"no *.tif, *.tiff, *.zip or SAFE product in folder {argument}"
        elif is_pattern(argument) and not path.exists():
            files = sorted(Path(p) for p in glob.glob(argument, recursive=True))
            files = [p for p in files if p.is_file() or _is_scene_dir(p)]
            reason = f"pattern {argument} matches no file"
        else:
            files = [path]
            reason = ""
        if not files:
            missing.append(FleetRecord.failed(argument, "", reason))
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found, missing


def name_scenes(paths: Sequence[Path]) -> list[SceneJob]:
    """Output names: the file's stem; where two scenes share a stem, the path from the folder
    all of them share, with `__` for `/` (`2024/a/scene.tif` -> `a__scene`)."""
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path()
    jobs = []
    for path, full in zip(paths, resolved, strict=True):
        if stems[path.stem] == 1:
            name = path.stem
        else:
            relative = full.relative_to(common).with_suffix("")
            name = "__".join(relative.parts)
        jobs.append(SceneJob(path, name))
    return jobs


# --------------------------------------------------------------------------- records
@dataclass
class FleetRecord:
    """One scene's row of the summary: the scene, its name in the output folder, how it went
    and its header (CRS, size, footprint), and once predicted, the `SceneResult` of
    `predict_scene` / `write_scene` (the single-scene code)."""

    scene: str
    name: str
    status: str
    error: str = ""
    crs: str = ""
    width: int = 0
    height: int = 0
    footprint: dict | None = None  # GeoJSON geometry, WGS 84 longitude/latitude
    result: SceneResult | None = None
    # Sentinel-2 products (from their metadata; empty for GeoTIFF scenes).
    product_id: str = ""
    level: str = ""
    baseline: str = ""
    sensing_date: str = ""

    @classmethod
    def failed(cls, scene: str, name: str, error: str) -> FleetRecord:
        """A scene that failed before its header could be read (or an argument naming none)."""
        return cls(str(scene), name, FAILED, error=error)

    @classmethod
    def described(cls, job: SceneJob, info: SceneInfo) -> FleetRecord:
        """A scene whose header passed: CRS, size and footprint; `succeed` or `fail` next."""
        record = cls(str(job.path), job.name, FAILED)
        record.crs = info.crs.to_string()
        record.width, record.height = info.width, info.height
        record.footprint = footprint(info)
        product = info.product
        if product is not None:
            record.product_id, record.level = product.product_id, product.level
            record.baseline, record.sensing_date = product.baseline, product.sensing_date
        return record

    def succeed(self, result: SceneResult) -> FleetRecord:
        self.status, self.result = OK, result
        return self

    def fail(self, error: str) -> FleetRecord:
        self.status, self.error, self.result = FAILED, error, None
        return self

    @property
    def tailings_ha(self) -> float:
        return self.result.tailings_ha if self.result else 0.0

    @property
    def valid_ha(self) -> float:
        return self.result.valid_m2 / SQUARE_METRES_PER_HECTARE if self.result else 0.0

    @property
    def share_pct(self) -> float:
        """Tailings as a share of the scene's area with data, in per cent (by area)."""
        return 100.0 * self.tailings_ha / self.valid_ha if self.valid_ha else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FleetRecord:
        fields = json.loads(text)
        if fields["result"] is not None:
            fields["result"] = SceneResult(**fields["result"])
        return cls(**fields)

    def properties(self) -> dict:
        """The summary's columns (CSV) and feature properties (GeoJSON)."""
        out = {name: "" for name in ("mask", "probabilities", "polygons_file")}
        for path in self.result.outputs if self.result else ():
            kind = (
                "mask"
                if path.endswith(".mask.tif")
                else "probabilities"
                if path.endswith(".probabilities.tif")
                else "polygons_file"
            )
            out[kind] = os.path.basename(path)
        result = self.result
        ok = self.status == OK
        return {
            "scene": self.scene,
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "crs": self.crs,
            "width": self.width,
            "height": self.height,
            "windows": result.windows if result else 0,
            "tailings_pixels": result.tailings_pixels if ok and result else "",
            "tailings_ha": round(self.tailings_ha, 4) if ok else "",
            "valid_ha": round(self.valid_ha, 4) if ok else "",
            "tailings_share_pct": round(self.share_pct, 4) if ok else "",
            "polygons": "" if result is None or result.polygons is None else result.polygons,
            "product_id": self.product_id,
            "level": self.level,
            "baseline": self.baseline,
            "sensing_date": self.sensing_date,
            "cloudy_ha": round(result.cloudy_ha, 4)
            if ok and result and result.clouds_masked
            else "",
            "cloud_mask": result.clouds if result else "",
            "seconds": round(result.seconds if result else 0.0, 2),
            "area_method": result.area_method if result else "",
            **out,
        }


def footprint(info: SceneInfo) -> dict | None:
    """The scene's outline as a GeoJSON polygon in WGS 84, its edges sampled
    FOOTPRINT_POINTS_PER_EDGE times so a projected scene's outline keeps its shape."""
    import numpy as np
    from rasterio.warp import transform

    n = FOOTPRINT_POINTS_PER_EDGE
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    w, h = info.width, info.height
    cols = np.concatenate([t * w, np.full(n, w), (1 - t) * w, np.zeros(n), [0.0]])
    rows = np.concatenate([np.zeros(n), t * h, np.full(n, h), (1 - t) * h, [0.0]])
    t = info.transform
    x, y = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    try:
        lon, lat = map(np.asarray, transform(info.crs, WGS84, list(x), list(y)))
    except Exception:  # noqa: BLE001 - an outline is a convenience; the row stays without it
        return None
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [ring]}


def write_summary(out_dir: Path, records: Sequence[FleetRecord]) -> tuple[Path, Path]:
    """summary.csv and summary.geojson, a row / feature per scene in the order of their paths,
    each file replaced whole (written beside, then renamed)."""
    records = sorted(records, key=lambda record: record.scene)
    rows = [record.properties() for record in records]
    columns = list(FleetRecord("", "", OK).properties())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    features = [
        {"type": "Feature", "properties": row, "geometry": record.footprint}
        for row, record in zip(rows, records, strict=True)
    ]
    collection = {"type": "FeatureCollection", "features": features}
    paths = (out_dir / SUMMARY_CSV, out_dir / SUMMARY_GEOJSON)
    for path, content in zip(paths, (text.getvalue(), json.dumps(collection)), strict=True):
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_text(content, encoding="utf-8")
            partial.replace(path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise PredictError(f"{path}: cannot write the summary ({err.strerror})") from None
    return paths


def exit_code(records: Sequence[FleetRecord]) -> int:
    """0 every scene predicted; EXIT_SOME_FAILED some failed (the rest written); 1 none done."""
    failed = sum(record.status != OK for record in records)
    if not failed:
        return EXIT_OK
    return EXIT_FAILED if failed == len(records) else EXIT_SOME_FAILED


# --------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class FleetPlan:
    """The scenes that passed their header checks (with their windows, for the ETA), and the
    records of those that did not."""

    ready: list[tuple[SceneJob, SceneInfo]]
    failed: list[FleetRecord]
    window_counts: dict[str, int]

    @property
    def windows(self) -> int:
        return sum(self.window_counts.values())


def plan_fleet(
    jobs: Sequence[SceneJob],
    cfg: PredictConfig,
    allow_resolution: bool,
    warn: Callable[[str], None],
    missing: Iterable[FleetRecord] = (),
) -> FleetPlan:
    """Check every scene's header (no pixel read, no model loaded): a scene that fails
    becomes a failed record now, with the same one line `tailings predict SCENE` prints."""
    ready, failed, windows = [], list(missing), {}
    for job in jobs:
        try:
            info = inspect_scene(job.path, cfg.band_baseline)
            warning = resolution_warning(info, allow=allow_resolution)
        except PredictError as err:
            failed.append(FleetRecord.failed(str(job.path), job.name, str(err)))
            continue
        if warning:
            warn(warning)
        for note in info.product.notes if info.product else ():
            warn(note)
        ready.append((job, info))
        windows[job.name] = scene_windows(info.height, info.width, cfg)
    return FleetPlan(ready, failed, windows)


# --------------------------------------------------------------------------- progress
class FleetProgress:
    """Scenes and windows done, with an ETA from the windows' pace so far.

    On a terminal: tqdm's bar over all windows, the scene in its description, one line per
    finished scene above it. Elsewhere (a log, CI): one line per finished scene with the ETA.
    """

    def __init__(
        self,
        scenes: int,
        windows: int,
        say: Callable[[str], None],
        stream=None,
        terminal: bool | None = None,
    ) -> None:
        """`terminal`: whether `stream` reaches a person's terminal (default: its isatty; the
        CLI says so itself, its stderr being a pipe to a line filter that ends at one)."""
        self.scenes, self.windows, self.say = scenes, windows, say
        self.stream = stream if stream is not None else sys.stderr
        self.done_windows = 0
        self.done_scenes = 0
        self.scene_end = 0
        self.started = time.monotonic()
        self.bar = None
        if terminal is None:
            terminal = self.stream.isatty()
        if terminal and windows:
            from tqdm import tqdm

            self.bar = tqdm(
                total=windows, unit="window", file=self.stream, dynamic_ncols=True, leave=False
            )

    def start(self, index: int, job: SceneJob, windows: int) -> None:
        self.scene_end = self.done_windows + windows
        if self.bar is not None:
            self.bar.set_description(f"scene {index}/{self.scenes} {job.name}")

    def advance(self, windows: int) -> None:
        self.done_windows += windows
        if self.bar is not None:
            self.bar.update(windows)

    def eta(self) -> str:
        if not self.done_windows or self.done_windows >= self.windows:
            return ""
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done_windows * (self.windows - self.done_windows)
        return f", ETA {_duration(left)}"

    def finish(self, index: int, record: FleetRecord) -> None:
        """A scene is done: its windows count as done (also those a failure skipped)."""
        self.advance(max(0, self.scene_end - self.done_windows))
        self.done_scenes += 1
        if record.status == OK and record.result is not None:
            what = (
                f"{record.tailings_ha:.2f} ha tailings ({record.share_pct:.2f} % of "
                f"{record.valid_ha:.2f} ha), {record.result.seconds:.1f} s"
            )
        else:
            what = f"FAILED: {record.error}"
        line = f"[{index}/{self.scenes}] {record.name}: {what}{self.eta()}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.say(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --------------------------------------------------------------------------- in-process
@dataclass(frozen=True)
class FleetOutputs:
    """What each scene writes into `out_dir` besides its mask."""

    out_dir: Path
    probabilities: bool = False
    polygons: bool = False

    def paths(self, job: SceneJob) -> tuple[Path, Path | None, Path | None]:
        return (
            job.mask(self.out_dir),
            job.probabilities(self.out_dir) if self.probabilities else None,
            job.polygons(self.out_dir) if self.polygons else None,
        )


def predict_fleet(
    plan: FleetPlan,
    model: TileModel,
    outputs: FleetOutputs,
    cfg: PredictConfig,
    progress: FleetProgress,
) -> list[FleetRecord]:
    """Predict every ready scene with one model; a failed scene is recorded and skipped.
    The summary is rewritten after each scene."""
    records = list(plan.failed)
    write_summary(outputs.out_dir, records)
    for index, (job, info) in enumerate(plan.ready, start=1):
        progress.start(index, job, plan.window_counts[job.name])
        mask, probabilities, polygons = outputs.paths(job)
        try:
            result = predict_scene(
                job.path,
                model,
                mask,
                cfg,
                out_probabilities=probabilities,
                out_polygons=polygons,
                progress=progress.advance,
            )
        except TailingsError as err:
            message = str(err)
        except Exception as err:  # noqa: BLE001 - one scene's surprise must not stop the fleet
            message = f"{job.path}: {type(err).__name__}: {err}"
        else:
            message = ""
        record = FleetRecord.described(job, info)
        record = record.fail(message) if message else record.succeed(result)
        records.append(record)
        progress.finish(index, record)
        write_summary(outputs.out_dir, records)
    progress.close()
    return records
