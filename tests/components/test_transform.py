"""The Transform decodes pixels and z-scores them with whole-dataset per-band statistics."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components import transform_lib as T
from schemas import features as F
from tests.components import synthetic


def _decoded(instances: list[dict], tile: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.frombuffer(i[F.IMAGE], F.IMAGE_DTYPE) for i in instances])
    masks = np.stack([np.frombuffer(i[F.MASK], F.MASK_DTYPE) for i in instances])
    return images.reshape(-1, tile, tile, 3), masks.reshape(-1, tile, tile, 1)


def _read_transformed(run: synthetic.TransformRun, split: str) -> dict[str, np.ndarray]:
    spec = tft.TFTransformOutput(run.transform_output).transformed_feature_spec()
    files = tf.io.gfile.glob(run.transformed_files[split])
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000)
    parsed = tf.io.parse_example(next(iter(records)), spec)
    return {key: value.numpy() for key, value in parsed.items()}


@pytest.fixture(scope="module")
def train_statistics(raw_splits, transform_config) -> tuple[np.ndarray, np.ndarray]:
    images, _ = _decoded(raw_splits[synthetic.TRAIN], transform_config.tile_size)
    pixels = images.reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), np.sqrt(pixels.var(axis=0) + transform_config.variance_epsilon)


@pytest.mark.parametrize("split", [synthetic.TRAIN, synthetic.EVAL])
def test_images_are_z_scored_with_train_statistics(
    transform_run, raw_splits, transform_config, train_statistics, split
) -> None:
    mean, std = train_statistics
    tile = transform_config.tile_size
    images, masks = _decoded(raw_splits[split], tile)
    out = _read_transformed(transform_run, split)

    assert out[T.IMAGE_XF].shape == (len(images), tile, tile, 3)
    np.testing.assert_allclose(out[T.IMAGE_XF], (images - mean) / std, atol=1e-4)
    np.testing.assert_allclose(out[T.PIXEL_MEAN], np.broadcast_to(mean, (len(images), 3)), 1e-5)
    np.testing.assert_allclose(out[T.PIXEL_STD], np.broadcast_to(std, (len(images), 3)), 1e-5)
    np.testing.assert_array_equal(out[T.MASK_XF], masks.astype(np.float32))
    assert [p.decode() for p in out[T.PAIR_ID_XF]] == [
        i[F.PAIR_ID].decode() for i in raw_splits[split]
    ]


def test_train_split_is_standard_normal_per_band(transform_run) -> None:
    image_xf = _read_transformed(transform_run, synthetic.TRAIN)[T.IMAGE_XF].reshape(-1, 3)
    np.testing.assert_allclose(image_xf.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(image_xf.std(axis=0), 1.0, atol=1e-3)


def test_transformed_schema_has_fixed_tile_shapes(transform_run, transform_config) -> None:
    spec = tft.TFTransformOutput(transform_run.transform_output).transformed_feature_spec()
    tile = transform_config.tile_size
    assert spec[T.IMAGE_XF].shape == [tile, tile, 3]
    assert spec[T.MASK_XF].shape == spec[T.SITE_MASK_XF].shape == [tile, tile, 1]
    assert spec[T.PIXEL_MEAN].shape == spec[T.PIXEL_STD].shape == [3]
    assert spec[T.GEOTRANSFORM_XF].shape == [6]  # the georeference, for merging sites
    assert set(spec) == {
        T.CRS_WKT_XF,
        T.GEOTRANSFORM_XF,
        T.IMAGE_XF,
        T.MASK_XF,
        T.SITE_MASK_XF,
        T.PIXEL_MEAN,
        T.PIXEL_STD,
        T.PAIR_ID_XF,
        T.SITE_ID_XF,
    }


@pytest.mark.parametrize(
    "value",
    [
        tf.constant([b"a", b"b"]),
        tf.constant([[b"a"], [b"b"]]),
        tf.sparse.from_dense(tf.constant([[b"a"], [b"b"]])),
        tf.ragged.constant([[b"a"], [b"b"]]),
    ],
    ids=["dense", "dense_1", "sparse", "ragged"],
)
def test_any_schema_representation_becomes_one_value_per_example(value) -> None:
    dense = T._to_dense_vector(value)
    assert dense.shape.rank == 1
    assert list(dense.numpy()) == [b"a", b"b"]


def test_decoders_use_the_conversion_byte_layout() -> None:
    image = np.arange(2 * 4 * 4 * 3, dtype=F.IMAGE_DTYPE).reshape(2, 4, 4, 3)
    mask = (np.arange(2 * 4 * 4) % 2).astype(F.MASK_DTYPE).reshape(2, 4, 4)
    decoded_image = T.decode_image(tf.constant([i.tobytes() for i in image]), 4)
    decoded_mask = T.decode_mask(tf.constant([m.tobytes() for m in mask]), 4)
    np.testing.assert_array_equal(decoded_image.numpy(), image)
    np.testing.assert_array_equal(decoded_mask.numpy(), mask[..., None].astype(np.float32))
