"""A configurable, fully convolutional U-Net for per-pixel tailings probability.

Fully convolutional so the same weights serve the training tile size, random crops and
any other image whose sides are a multiple of 2**depth.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from components.config import ModelConfig

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
KERNEL_SIZE = 3
POOL_SIZE = 2
CONVS_PER_BLOCK = 2
KERNEL_INITIALIZER = "he_normal"  # suits ReLU


def _conv_block(x: tf.Tensor, filters: int, config: ModelConfig, name: str) -> tf.Tensor:
    """Two 3x3 conv (+BN) + ReLU layers: the U-Net unit at every level."""
    for i in range(CONVS_PER_BLOCK):
        x = keras.layers.Conv2D(
            filters,
            KERNEL_SIZE,
            padding="same",
            use_bias=not config.batch_norm,  # BN's beta replaces the bias
            kernel_initializer=KERNEL_INITIALIZER,
            name=f"{name}_conv{i}",
        )(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(
                momentum=config.batch_norm_momentum, name=f"{name}_bn{i}"
            )(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    config: ModelConfig, input_shape: tuple[int | None, int | None, int] = (None, None, 3)
) -> keras.Model:
    """U-Net mapping normalised images [N,H,W,C] to tailings probabilities [N,H,W,1].

    H and W must be multiples of `config.size_multiple` (2**depth) so the skip connections
    line up after the poolings.
    """
    for side in input_shape[:2]:
        if side is not None and side % config.size_multiple:
            raise ValueError(f"input side {side} is not a multiple of {config.size_multiple}")
    widths = config.widths()
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    if config.input_downsample > 1:
        x = keras.layers.AveragePooling2D(config.input_downsample, name="downsample")(x)
    skips = []
    for level in range(config.depth):
        x = _conv_block(x, widths[level], config, name=f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(POOL_SIZE, name=f"pool{level}")(x)
    x = _conv_block(x, widths[config.depth], config, name="bottleneck")
    if config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(config.depth)):
        x = keras.layers.Conv2DTranspose(
            widths[level], POOL_SIZE, strides=POOL_SIZE, padding="same", name=f"up{level}"
        )(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, widths[level], config, name=f"dec{level}")
    if config.input_downsample > 1:
        x = keras.layers.UpSampling2D(
            config.input_downsample, interpolation="bilinear", name="upsample"
        )(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"unet_d{config.depth}_w{config.base_width}")


def shift_decision_threshold(model: keras.Model, threshold: float) -> None:
    """Make the output's 0.5 cut fall where the trained model's raw probability is `threshold`.

    sigmoid(z - logit(t)) >= 0.5 exactly when sigmoid(z) >= t, so lowering the sigmoid output
    layer's bias by logit(t) moves the operating point with no extra layer: every consumer
    (TFMA's metrics at 0.5, TF Serving clients, `tailings predict`) keeps 0.5 as the cut, and
    the ranking of pixels (AUC) is unchanged.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if threshold == 0.5:
        return  # logit(0.5) == 0: nothing to move
    layer = model.get_layer(OUTPUT_NAME)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - math.log(threshold / (1.0 - threshold))])
