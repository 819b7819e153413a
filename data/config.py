"""Defaults of the data layer, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairingConfig:
    """How image and mask files pair up: `img_<id>.tif` <-> `mask_<id>.tif`, or equal names."""

    image_prefix: str = "img_"
    mask_prefix: str = "mask_"
    extensions: tuple[str, ...] = (".tif", ".tiff")


@dataclass(frozen=True)
class ValidationConfig:
    """What a pair must satisfy before it is written.

    `transform_tolerance` is a fraction of the pixel size: grids that differ by float noise in
    the last digits of a degree are the same grid; a shift of a tenth of a pixel is not.
    """

    image_bands: int = 3
    mask_values: tuple[int, ...] = (0, 1)
    transform_tolerance: float = 1e-3
    # Checked from the header, before any pixel is read: a few-MB file whose header claims
    # 200000 x 200000 pixels would make the reader allocate 447 GiB. 10000 x 10000 is the
    # schema's height/width domain (1.2 GB of float32 RGB); the study's tiles are 448 x 448.
    max_pixels: int = 10000 * 10000
    # The tile size the pipeline trains on (ExampleGen sets TransformConfig.tile_size); None
    # accepts any size (`tailings convert`).
    tile_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.tile_size is not None and self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {self.tile_size}")


@dataclass(frozen=True)
class ConversionConfig:
    """Options of `tailings convert`: parallelism and output layout."""

    workers: int = 1
    # DirectRunner mode when workers > 1. Processes isolate workers but each one imports Beam and
    # TensorFlow (~10 s); threads share them and still run in parallel, because GDAL decoding and
    # zlib release the GIL (see benchmarks/results/convert.json).
    running_mode: str = "multi_processing"
    shards: int = 4
    examples_pattern: str = "examples-{shard:05d}-of-{shards:05d}.tfrecord.gz"
    rejected_file: str = "rejected.jsonl"
    summary_file: str = "summary.json"
    pairing: PairingConfig = PairingConfig()
    validation: ValidationConfig = ValidationConfig()


@dataclass(frozen=True)
class SceneConfig:
    """How the `scene` split is built from the eval sites (see `data.scenes`): each eval site
    merged into one place and cut into windows on a grid shifted by an offset the seed fixes."""

    seed: int = 2024
    source_split: str = "eval"
    name: str = "scene"


@dataclass(frozen=True)
class SplitConfig:
    """Train/eval split by hash of the site id (`data.sites`; deterministic: a site never
    changes sides, and no eval tile shares ground with a train tile), plus the `scene` split
    cut from the eval sites."""

    splits: tuple[tuple[str, int], ...] = (("train", 4), ("eval", 1))  # 80/20
    shards: int = 2  # per split
    scene: SceneConfig = SceneConfig()
