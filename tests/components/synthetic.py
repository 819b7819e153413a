"""Tiny synthetic raw examples and a real TFT Beam run, shared by the component tests.

The raw examples carry every feature of `schemas.features.feature_spec()` so Transform sees
what conversion writes; the transform run mirrors TFX Transform's outputs (a transform
graph dir plus gzip TFRecords of transformed tf.Examples per split).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from components.config import TransformConfig
from data.examples import summary_values
from schemas import features as F

UTM_23S_WKT = CRS.from_epsg(32723).to_wkt().encode()

BAND_NAMES = (b"B2", b"B3", b"B4")
BACKGROUND_REFLECTANCE = (0.05, 0.08, 0.10)  # vegetation-ish
TAILINGS_REFLECTANCE = (0.25, 0.30, 0.35)  # bright, like the study's tailings
NOISE = 0.02
TRAIN, EVAL = "train", "eval"


def make_pair(
    index: int, size: int, rng: np.random.Generator
) -> tuple[str, np.ndarray, np.ndarray]:
    """One image with a bright rectangle of 'tailings' and its {0,1} mask."""
    mask = np.zeros((size, size), np.uint8)
    top, left = rng.integers(0, size // 2, size=2)
    height, width = rng.integers(size // 4, size // 2, size=2)
    mask[top : top + height, left : left + width] = 1
    base = np.where(mask[..., None] == 1, TAILINGS_REFLECTANCE, BACKGROUND_REFLECTANCE)
    image = (base + rng.normal(0.0, NOISE, base.shape)).astype(np.float32)
    return f"pair_{index:03d}", image, mask


def raw_instance(pair_id: str, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """A raw example in TFT's instance-dict form, with every feature of the spec."""
    height, width, bands = image.shape
    return {
        F.PAIR_ID: pair_id.encode(),
        F.IMAGE: image.astype(F.IMAGE_DTYPE).tobytes(),
        F.MASK: mask.astype(F.MASK_DTYPE).tobytes(),
        F.SITE_ID: f"site-{pair_id}".encode(),  # every synthetic tile is a place of its own
        F.SITE_MASK: mask.astype(F.MASK_DTYPE).tobytes(),
        F.HEIGHT: height,
        F.WIDTH: width,
        F.BANDS: bands,
        F.BAND_NAMES: list(BAND_NAMES),
        F.CRS_WKT: UTM_23S_WKT,  # a real CRS: scene windows merge each tile on its grid
        F.EPSG: 32723,
        F.TRANSFORM: [10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0],
        **summary_values(image, mask),  # band vectors, one scalar per band, tailings fraction
    }


def serialize(instance: dict[str, Any]) -> bytes:
    """The serialized tf.Example of a raw instance (what a serving client sends)."""
    import tensorflow as tf

    feature = {}
    for key, value in instance.items():
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif isinstance(values[0], int):
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def make_instances(count: int, size: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [raw_instance(*make_pair(i, size, rng)) for i in range(count)]


@dataclass(frozen=True)
class TransformRun:
    transform_output: str  # what TFX passes as fn_args.transform_output
    transformed_files: dict[str, str]  # split -> file pattern of gzip TFRecords


def run_transform(
    splits: dict[str, list[dict[str, Any]]], work_dir: Path, config: TransformConfig
) -> TransformRun:
    """Analyze on the train split, transform every split, write like TFX Transform does."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    from components import transform_module

    raw_metadata = dataset_metadata.DatasetMetadata.from_feature_spec(F.feature_spec())
    preprocessing_fn = functools.partial(
        transform_module.preprocessing_fn, custom_config=config.to_custom_config()
    )
    transform_output = str(work_dir / "transform_graph")
    files = {}
    with tft_beam.Context(temp_dir=str(work_dir / "tft_tmp")):
        with beam.Pipeline() as pipeline:
            raw = {
                split: pipeline | f"Create{split}" >> beam.Create(instances)
                for split, instances in splits.items()
            }
            (train_xf, metadata_xf), transform_fn = (
                raw[TRAIN],
                raw_metadata,
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_output)
            # TFX Transform also stores the raw schema; the Trainer parses serving input with it.
            raw_metadata_dir = os.path.join(
                transform_output, tft.TFTransformOutput.RAW_METADATA_DIR
            )
            _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
                raw_metadata_dir, pipeline
            )
            coder = tft.coders.ExampleProtoCoder(metadata_xf.schema)
            for split, data in raw.items():
                if split == TRAIN:
                    transformed = train_xf
                else:
                    transformed, _ = (
                        (data, raw_metadata),
                        transform_fn,
                    ) | f"Transform{split}" >> tft_beam.TransformDataset()
                prefix = os.path.join(str(work_dir), "transformed_examples", f"Split-{split}")
                _ = (
                    transformed
                    | f"Encode{split}" >> beam.Map(coder.encode)
                    | f"Write{split}"
                    >> beam.io.WriteToTFRecord(
                        os.path.join(prefix, "transformed_examples"),
                        file_name_suffix=".gz",
                        compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                    )
                )
                files[split] = os.path.join(prefix, "*")
    return TransformRun(transform_output=transform_output, transformed_files=files)
