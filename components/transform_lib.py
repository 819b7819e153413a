"""TF Transform logic: decode raw pixel bytes and z-score them with dataset-wide band stats.

The statistics are TFT analyzers over every pixel of the training data, so training,
evaluation and serving (through the transform graph, or through the constants the Trainer
bakes into the float-image signature) share exactly one normalisation.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from components.config import TransformConfig
from schemas import features

# Transformed feature names (the Trainer, TFMA and the tests import these).
IMAGE_XF = "image_xf"  # float32 [S, S, 3], z-scored per band
MASK_XF = "mask_xf"  # float32 [S, S, 1], 0 background / 1 tailings: the tile's own mask
SITE_MASK_XF = "site_mask_xf"  # float32 [S, S, 1]: the site label (`data.sites`)
PIXEL_MEAN = "pixel_mean"  # float32 [3], dataset per-band mean (same for every example)
PIXEL_STD = "pixel_std"  # float32 [3], dataset per-band sqrt(var + eps)
PAIR_ID_XF = features.PAIR_ID  # passed through unchanged, to name figures and slices
SITE_ID_XF = features.SITE_ID  # passed through unchanged
# The georeference, passed through so the Trainer can merge a site's tiles onto one grid
# (`TrainConfig.mosaic="sites"`).
CRS_WKT_XF = features.CRS_WKT  # string
GEOTRANSFORM_XF = features.TRANSFORM  # float32 [6], affine a, b, c, d, e, f
# The transformed label of each `TrainConfig.labels` choice.
LABEL_KEYS = {"own": MASK_XF, "site": SITE_MASK_XF}


def label_key(labels: str) -> str:
    """The transformed feature the Trainer learns and the Evaluators score for `labels`."""
    return LABEL_KEYS[labels]


# Raw features `preprocessing_fn` reads; serving requests need only the image.
RAW_INPUT_KEYS: tuple[str, ...] = (
    features.IMAGE,
    features.MASK,
    features.SITE_MASK,
    features.PAIR_ID,
    features.SITE_ID,
)
SERVING_INPUT_KEYS: tuple[str, ...] = (features.IMAGE,)

BANDS = features.EXPECTED_BANDS


def _to_dense_vector(value: tf.Tensor | tf.SparseTensor | tf.RaggedTensor) -> tf.Tensor:
    """One value per example -> [batch], whatever form the schema gave the feature.

    A schema feature without a fixed shape arrives as a SparseTensor (or RaggedTensor) of
    one value per row; one with shape [1] arrives as [batch, 1].
    """
    if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value)
    elif isinstance(value, tf.RaggedTensor):
        value = value.to_tensor()
    if value.shape.rank is not None and value.shape.rank > 1:
        value = value[:, 0]
    return value


def decode_image(image_bytes: tf.Tensor, tile_size: int) -> tf.Tensor:
    """Little-endian float32 bytes [batch] -> reflectance [batch, S, S, 3]."""
    flat = tf.io.decode_raw(image_bytes, tf.float32, little_endian=True)
    return tf.reshape(flat, [-1, tile_size, tile_size, BANDS])


def decode_mask(mask_bytes: tf.Tensor, tile_size: int) -> tf.Tensor:
    """Raw uint8 {0,1} bytes [batch] -> float32 labels [batch, S, S, 1]."""
    flat = tf.io.decode_raw(mask_bytes, tf.uint8)
    return tf.cast(tf.reshape(flat, [-1, tile_size, tile_size, 1]), tf.float32)


def normalize(images: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """Per-band z-score [..., 3]; shared by Transform and the float-image serving path."""
    return (tf.cast(images, tf.float32) - mean) / std


def preprocessing_fn(
    inputs: dict[str, Any], custom_config: dict[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """TFT preprocessing: decoded, normalised image and mask plus the statistics used.

    `custom_config` is `TransformConfig(...).to_custom_config()`; missing means defaults.
    """
    config = TransformConfig.from_custom_config(custom_config)
    size = config.tile_size
    images = decode_image(_to_dense_vector(inputs[features.IMAGE]), size)

    pixels = tf.reshape(images, [-1, BANDS])  # analyzers reduce over every pixel
    mean = tft.mean(pixels, reduce_instance_dims=False)
    std = tf.sqrt(tft.var(pixels, reduce_instance_dims=False) + config.variance_epsilon)

    per_example = tf.zeros_like(images[:, 0, 0, :])  # [batch, 3], to broadcast constants
    outputs = {
        IMAGE_XF: normalize(images, mean, std),
        PIXEL_MEAN: per_example + mean,
        PIXEL_STD: per_example + std,
    }
    if features.MASK in inputs:
        outputs[MASK_XF] = decode_mask(_to_dense_vector(inputs[features.MASK]), size)
    if features.SITE_MASK in inputs:
        outputs[SITE_MASK_XF] = decode_mask(_to_dense_vector(inputs[features.SITE_MASK]), size)
    if features.PAIR_ID in inputs:
        outputs[PAIR_ID_XF] = _to_dense_vector(inputs[features.PAIR_ID])
    if features.SITE_ID in inputs:
        outputs[SITE_ID_XF] = _to_dense_vector(inputs[features.SITE_ID])
    if features.CRS_WKT in inputs:
        outputs[CRS_WKT_XF] = _to_dense_vector(inputs[features.CRS_WKT])
    if features.TRANSFORM in inputs:
        geotransform = inputs[features.TRANSFORM]
        if isinstance(geotransform, tf.SparseTensor):
            geotransform = tf.sparse.to_dense(geotransform)
        outputs[GEOTRANSFORM_XF] = tf.reshape(geotransform, [-1, 6])
    return outputs
