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
class SplitConfig:
    """Train/eval split by hash of the pair id (deterministic: a pair never changes sides)."""

    splits: tuple[tuple[str, int], ...] = (("train", 4), ("eval", 1))  # 80/20
    shards: int = 2  # per split
