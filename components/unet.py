"""Configurable, fully convolutional U-Nets for per-pixel tailings probability.

Fully convolutional so the same weights serve the training tile size, random crops and
any other image whose sides are a multiple of `ModelConfig.size_multiple`. Three encoders:
the classic U-Net's, trained from scratch, and ImageNet-pretrained MobileNetV2 or
EfficientNet-Lite0 under one decoder.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from components import pretrained
from components.config import ModelConfig

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
KERNEL_SIZE = 3
POOL_SIZE = 2
CONVS_PER_BLOCK = 2
KERNEL_INITIALIZER = "he_normal"  # suits ReLU
# MobileNetV2 layers whose outputs feed the decoder, at output strides 2, 4, 8, 16 and 32
# (the expansion activations, as in TensorFlow's MobileNetV2 segmentation examples).
MOBILENET_V2_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
)
MOBILENET_V2_BOTTLENECK = "out_relu"
# EfficientNet-Lite0 (Tan & Le 2019, "Lite": no squeeze-excitation, ReLU6, stem and head
# not scaled): per stage (kernel, stride, expansion, output filters, repeats), 16 blocks.
EFFICIENTNET_LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
EFFICIENTNET_LITE_STEM = 32
EFFICIENTNET_LITE_HEAD = 1280
RELU6 = 6.0
# The expansion activation of each stride-2 block (as for MobileNetV2) and the head.
EFFICIENTNET_LITE0_SKIPS = (
    "block1_expand_relu",
    "block3_expand_relu",
    "block5_expand_relu",
    "block11_expand_relu",
)
EFFICIENTNET_LITE_BOTTLENECK = "head_relu"
# Input channel of ImageNet's R, G and B: our bands are B2, B3, B4 (blue, green, red).
IMAGENET_BAND_ORDER = (2, 1, 0)
# ImageNet's per-channel (R, G, B) mean and std on the 0-1 scale. torchvision's MobileNetV2
# takes (x - mean) / std, which our per-band standardised bands already resemble;
# EfficientNet-Lite takes (255 x - 127) / 128, about 2.2x narrower: mapped in its graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_INPUT_CENTER, LITE_INPUT_SCALE = 127.0, 128.0
PIXEL_RANGE = 255.0
# (left-right flip first?, quarter turns) per pass of test-time augmentation; "flips" are the
# identity, both mirrors and the half turn, "d4" all eight symmetries of the square.
TEST_TIME_TRANSFORMS: dict[str, tuple[tuple[bool, int], ...]] = {
    "none": ((False, 0),),
    "flips": ((False, 0), (True, 0), (False, 2), (True, 2)),
    "d4": tuple((flip, turns) for flip in (False, True) for turns in range(4)),
}


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


Shape = tuple[int | None, int | None, int]


def build_model(config: ModelConfig, input_shape: Shape = (None, None, 3)) -> keras.Model:
    """The network `config.encoder` names: normalised images [N,H,W,C] -> probabilities.

    H and W must be multiples of `config.size_multiple` so the skip connections line up.
    """
    for side in input_shape[:2]:
        if side is not None and side % config.size_multiple:
            raise ValueError(f"input side {side} is not a multiple of {config.size_multiple}")
    if config.encoder == "unet":
        return build_unet(config, input_shape)
    return build_pretrained_unet(config, input_shape)


def build_unet(config: ModelConfig, input_shape: Shape = (None, None, 3)) -> keras.Model:
    """The classic U-Net (Ronneberger et al.), sized by `depth` and `base_width`."""
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


def _mobilenet_v2_encoder(config: ModelConfig, channels: int) -> keras.Model:
    """MobileNetV2 returning its skip features and bottleneck, with ImageNet weights.

    Its BatchNorm layers take torchvision's epsilon (the weights' origin) and the config's
    momentum: Keras' 0.999 would leave the moving statistics ~1000 steps behind fine-tuning.
    """
    base = keras.applications.MobileNetV2(
        input_shape=(None, None, channels), include_top=False, weights=None
    )
    base_config = base.get_config()
    for layer in base_config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["epsilon"] = pretrained.TORCH_BN_EPSILON
            layer["config"]["momentum"] = config.batch_norm_momentum
    base = keras.Model.from_config(base_config)
    if config.pretrained:
        if channels != len(IMAGENET_BAND_ORDER):
            raise ValueError(f"ImageNet weights need {len(IMAGENET_BAND_ORDER)} bands")
        pretrained.load_mobilenet_v2_weights(base, IMAGENET_BAND_ORDER)
    names = (*MOBILENET_V2_SKIPS, MOBILENET_V2_BOTTLENECK)
    outputs = [base.get_layer(name).output for name in names]
    return keras.Model(base.input, outputs, name="mobilenet_v2")


def _lite_input_mapping(channels: int) -> keras.layers.Layer:
    """Standardised bands -> the (255 x - 127) / 128 range EfficientNet-Lite was trained on.

    Each band's 0 and 1 std become its ImageNet colour's mean and std on that scale; a fixed
    Normalization layer ((x - mean) / sqrt(variance)), so it saves and serves like any layer.
    """
    if channels != len(IMAGENET_BAND_ORDER):
        raise ValueError(f"ImageNet weights need {len(IMAGENET_BAND_ORDER)} bands")
    scale, offset = [0.0] * channels, [0.0] * channels
    for colour, band in enumerate(IMAGENET_BAND_ORDER):
        scale[band] = PIXEL_RANGE * IMAGENET_STD[colour] / LITE_INPUT_SCALE
        offset[band] = (PIXEL_RANGE * IMAGENET_MEAN[colour] - LITE_INPUT_CENTER) / LITE_INPUT_SCALE
    return keras.layers.Normalization(
        mean=[-o / s for o, s in zip(offset, scale, strict=True)],
        variance=[1.0 / s**2 for s in scale],
        name="imagenet_range",
    )


def _efficientnet_lite0_encoder(config: ModelConfig, channels: int) -> keras.Model:
    """EfficientNet-Lite0 returning its skip features and head, with ImageNet weights.

    Keras has no Lite variant (its EfficientNetB0 has squeeze-excitation and swish), so the
    network is built here from the paper's stage table, its layers named after the weights
    file's keys (`pretrained.efficientnet_lite0_weights`). 'same' padding is TensorFlow's,
    which the weights were trained with.
    """

    def batch_norm(name: str) -> keras.layers.Layer:
        return keras.layers.BatchNormalization(
            epsilon=pretrained.TF_BN_EPSILON, momentum=config.batch_norm_momentum, name=name
        )

    inputs = keras.Input(shape=(None, None, channels))
    x = _lite_input_mapping(channels)(inputs) if config.pretrained else inputs
    x = keras.layers.Conv2D(
        EFFICIENTNET_LITE_STEM, 3, strides=2, padding="same", use_bias=False, name="stem"
    )(x)
    x = keras.layers.ReLU(RELU6, name="stem_relu")(batch_norm("stem_bn")(x))
    block, filters_in = 0, EFFICIENTNET_LITE_STEM
    for kernel, stride, expansion, filters, repeats in EFFICIENTNET_LITE0_STAGES:
        for repeat in range(repeats):
            shortcut, name = x, f"block{block}_"
            if expansion != 1:
                x = keras.layers.Conv2D(
                    filters_in * expansion, 1, use_bias=False, name=name + "expand"
                )(x)
                x = batch_norm(name + "expand_bn")(x)
                x = keras.layers.ReLU(RELU6, name=name + "expand_relu")(x)
            strides = stride if repeat == 0 else 1
            x = keras.layers.DepthwiseConv2D(
                kernel, strides=strides, padding="same", use_bias=False, name=name + "depthwise"
            )(x)
            x = batch_norm(name + "depthwise_bn")(x)
            x = keras.layers.ReLU(RELU6, name=name + "depthwise_relu")(x)
            x = keras.layers.Conv2D(filters, 1, use_bias=False, name=name + "project")(x)
            x = batch_norm(name + "project_bn")(x)
            if strides == 1 and filters_in == filters:
                x = keras.layers.Add(name=name + "add")([shortcut, x])
            block, filters_in = block + 1, filters
    x = keras.layers.Conv2D(EFFICIENTNET_LITE_HEAD, 1, use_bias=False, name="head")(x)
    x = keras.layers.ReLU(RELU6, name=EFFICIENTNET_LITE_BOTTLENECK)(batch_norm("head_bn")(x))
    encoder = keras.Model(inputs, x)
    if config.pretrained:
        pretrained.load_efficientnet_lite0_weights(encoder, IMAGENET_BAND_ORDER)
    names = (*EFFICIENTNET_LITE0_SKIPS, EFFICIENTNET_LITE_BOTTLENECK)
    outputs = [encoder.get_layer(name).output for name in names]
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def build_pretrained_unet(config: ModelConfig, input_shape: Shape = (None, None, 3)) -> keras.Model:
    """U-Net decoder on an ImageNet-pretrained encoder (MobileNetV2 or EfficientNet-Lite0).

    On 73 training tiles a scratch encoder cannot learn good features; ImageNet's edges and
    textures transfer to 10 m imagery (measured: docs/model-history.md).
    """
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    if config.input_downsample > 1:
        x = keras.layers.AveragePooling2D(config.input_downsample, name="downsample")(x)
    encoders = {
        "mobilenet_v2": _mobilenet_v2_encoder,
        "efficientnet_lite0": _efficientnet_lite0_encoder,
    }
    *skips, x = encoders[config.encoder](config, input_shape[-1])(x)
    if config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="bottleneck_dropout")(x)
    for level, (skip, width) in enumerate(zip(reversed(skips), config.decoder_widths, strict=True)):
        x = keras.layers.UpSampling2D(POOL_SIZE, interpolation="bilinear", name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skip])
        x = _conv_block(x, width, config, name=f"dec{level}")
    x = keras.layers.UpSampling2D(POOL_SIZE, interpolation="bilinear", name="up_input")(x)
    x = _conv_block(x, config.base_width, config, name="dec_input")
    if config.input_downsample > 1:
        x = keras.layers.UpSampling2D(
            config.input_downsample, interpolation="bilinear", name="upsample"
        )(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"{config.encoder}_unet")


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


def symmetry_outputs(
    model: keras.Model, images: tf.Tensor, transforms: tuple[tuple[bool, int], ...]
) -> list[tf.Tensor]:
    """The model's probabilities for each (mirror, quarter turns) copy of `images`, mapped
    back to the input's orientation, in the order of `transforms`.

    Copies of one shape go through the model as one batch (half turns keep the shape, odd
    quarter turns swap the sides of a non-square input): one call per shape instead of one
    per transform, so exporting a signature traces the network once or twice, not four or
    eight times (the export of the default recipe, `flips`, took as long again as with no
    test-time augmentation). Each copy's probabilities are the same as from its own call:
    inference-mode layers treat the samples of a batch independently.
    """
    outputs: dict[int, tf.Tensor] = {}
    for odd in (False, True):
        group = [(i, flip, turns) for i, (flip, turns) in enumerate(transforms) if turns % 2 == odd]
        if not group:
            continue
        copies = [
            tf.image.rot90(tf.reverse(images, axis=[2]) if flip else images, turns)
            for _, flip, turns in group
        ]
        batch = copies[0] if len(copies) == 1 else tf.concat(copies, axis=0)
        answers = model(batch, training=False)
        parts = [answers] if len(group) == 1 else tf.split(answers, len(group), axis=0)
        for (i, flip, turns), y in zip(group, parts, strict=True):
            y = tf.image.rot90(y, (4 - turns) % 4)
            outputs[i] = tf.reverse(y, axis=[2]) if flip else y
    return [outputs[i] for i in range(len(transforms))]


def symmetry_average(model: keras.Model, images: tf.Tensor, mode: str) -> tf.Tensor:
    """Mean of the model's probabilities over the symmetries `mode` names, mapped back.

    Tailings have no preferred orientation in a nadir image, and the model was trained on
    flipped and rotated tiles; averaging its answers for transformed copies of the input
    cancels part of its orientation-dependent error. Costs one forward pass per transform
    (batched: `symmetry_outputs`).
    """
    outputs = symmetry_outputs(model, images, TEST_TIME_TRANSFORMS[mode])
    return outputs[0] if len(outputs) == 1 else tf.add_n(outputs) / float(len(outputs))
