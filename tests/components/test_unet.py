"""The U-Net is fully convolutional: any multiple of 2**depth in, same size out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components import pretrained
from components.config import ModelConfig
from components.unet import (
    IMAGENET_BAND_ORDER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TEST_TIME_TRANSFORMS,
    build_model,
    shift_decision_threshold,
    symmetry_average,
    symmetry_outputs,
)

TINY = ModelConfig(encoder="unet", depth=2, base_width=4, batch_norm=True, dropout=0.1)


def test_output_is_a_probability_map_of_the_input_size() -> None:
    model = build_model(TINY)
    for shape in [(2, 32, 32, 3), (1, 64, 48, 3)]:
        probabilities = model.predict_on_batch(np.random.rand(*shape).astype(np.float32))
        assert probabilities.shape == shape[:3] + (1,)
        assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_widths_double_per_level() -> None:
    model = build_model(ModelConfig(encoder="unet", depth=3, base_width=8))
    filters = {
        layer.name: layer.filters
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.name.endswith("_conv0")
    }
    assert [filters[f"enc{i}_conv0"] for i in range(3)] == [8, 16, 32]
    assert filters["bottleneck_conv0"] == 64
    assert [filters[f"dec{i}_conv0"] for i in range(3)] == [8, 16, 32]


def test_batch_norm_and_dropout_are_optional() -> None:
    plain = build_model(
        ModelConfig(encoder="unet", depth=2, base_width=4, batch_norm=False, dropout=0.0)
    )
    kinds = {type(layer) for layer in plain.layers}
    assert keras.layers.BatchNormalization not in kinds
    assert keras.layers.Dropout not in kinds
    layers = build_model(TINY).layers
    assert {keras.layers.BatchNormalization, keras.layers.Dropout} <= {type(x) for x in layers}
    norms = [x for x in layers if isinstance(x, keras.layers.BatchNormalization)]
    assert all(x.momentum == TINY.batch_norm_momentum for x in norms)


def test_static_size_must_be_a_multiple_of_2_to_the_depth() -> None:
    with pytest.raises(ValueError, match="multiple"):
        build_model(TINY, input_shape=(30, 32, 3))


def test_input_downsample_keeps_the_output_size_and_raises_the_size_multiple() -> None:
    config = ModelConfig(encoder="unet", depth=2, base_width=4, input_downsample=2)
    assert config.size_multiple == 8
    model = build_model(config)
    out = model(np.zeros((1, 24, 40, 3), np.float32))
    assert out.shape == (1, 24, 40, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(config, input_shape=(20, 24, 3))


def test_shifted_threshold_moves_the_half_cut_and_keeps_the_ranking() -> None:
    keras.utils.set_random_seed(0)  # a tiny ReLU net can tie pixels for some initialisations
    model = build_model(
        ModelConfig(encoder="unet", depth=1, base_width=2, batch_norm=False, dropout=0.0)
    )
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    raw = model.predict(images, verbose=0)
    ordered = np.sort(raw, axis=None)
    cut = int(0.3 * ordered.size)
    threshold = float(ordered[cut - 1] + ordered[cut]) / 2  # between two pixels, not on one
    shift_decision_threshold(model, threshold)
    shifted = model.predict(images, verbose=0)
    np.testing.assert_array_equal(shifted >= 0.5, raw >= threshold)
    assert (shifted >= 0.5).mean() == pytest.approx(0.7, abs=0.01)
    assert np.all(np.diff(shifted.ravel()[np.argsort(raw, axis=None)]) >= 0)  # same ranking


def test_shifted_threshold_must_be_a_probability() -> None:
    model = build_model(ModelConfig(encoder="unet", depth=1, base_width=2))
    with pytest.raises(ValueError, match="threshold"):
        shift_decision_threshold(model, 1.0)


SMALL_MOBILENET = ModelConfig(
    encoder="mobilenet_v2", decoder_widths=(8, 8, 8, 8), base_width=4, input_downsample=1
)


SMALL_LITE0 = dataclasses.replace(SMALL_MOBILENET, encoder="efficientnet_lite0")
# per pretrained encoder: its small config, its ImageNet weights, three layers to compare, and
# the BatchNorm epsilon of the framework the weights come from
PRETRAINED = {
    "mobilenet_v2": (
        SMALL_MOBILENET,
        pretrained.mobilenet_v2_weights,
        ("block_8_expand", "block_8_expand_BN", "Conv_1"),
        pretrained.TORCH_BN_EPSILON,
    ),
    "efficientnet_lite0": (
        SMALL_LITE0,
        pretrained.efficientnet_lite0_weights,
        ("block8_expand", "block8_expand_bn", "head"),
        pretrained.TF_BN_EPSILON,
    ),
}


@pytest.mark.parametrize("encoder", sorted(PRETRAINED))
def test_pretrained_encoder_unet_keeps_the_size_and_checks_it(encoder) -> None:
    config = PRETRAINED[encoder][0]
    model = build_model(config)
    probabilities = model.predict_on_batch(np.random.rand(1, 64, 96, 3).astype(np.float32))
    assert probabilities.shape == (1, 64, 96, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(config, input_shape=(48, 64, 3))


@pytest.mark.parametrize("encoder", sorted(PRETRAINED))
def test_pretrained_encoder_starts_from_imagenet_with_its_batch_norm(encoder) -> None:
    config, imagenet_weights, names, epsilon = PRETRAINED[encoder]
    encoder_model = build_model(config).get_layer(encoder)
    imagenet = imagenet_weights()
    for name in names:
        got_weights = encoder_model.get_layer(name).get_weights()
        for got, want in zip(got_weights, imagenet[name], strict=True):
            np.testing.assert_array_equal(got, want)
    norms = [x for x in encoder_model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert {(x.epsilon, x.momentum) for x in norms} == {(epsilon, config.batch_norm_momentum)}
    # skips at output strides 2, 4, 8, 16 and the bottleneck at 32
    sides = [output.shape[1] for output in encoder_model(np.zeros((1, 64, 64, 3), np.float32))]
    assert sides == [32, 16, 8, 4, 2]


def test_efficientnet_lite0_sees_standardised_bands_on_its_imagenet_scale() -> None:
    """A band at its mean (0) becomes its colour's ImageNet mean on Lite's (255x-127)/128
    scale, one std above it that mean plus the colour's std: the range the weights know."""
    mapping = build_model(SMALL_LITE0).get_layer("efficientnet_lite0").get_layer("imagenet_range")
    pixels = np.array([0.0, 1.0], np.float32)[:, None, None, None] * np.ones((1, 1, 1, 3))
    at_mean, one_std = mapping(pixels.astype(np.float32)).numpy()[:, 0, 0, :]
    for colour, band in enumerate(IMAGENET_BAND_ORDER):  # red is our third band (B4)
        mean = (255 * IMAGENET_MEAN[colour] - 127) / 128
        assert at_mean[band] == pytest.approx(mean, abs=1e-5)
        assert one_std[band] - at_mean[band] == pytest.approx(255 * IMAGENET_STD[colour] / 128)


@pytest.mark.parametrize("small", [SMALL_MOBILENET, SMALL_LITE0], ids=lambda c: c.encoder)
def test_pretrained_encoders_from_scratch_do_not_need_the_weights(monkeypatch, small) -> None:
    def unavailable(*_):
        raise AssertionError("pretrained=False must not read the weights file")

    monkeypatch.setattr(pretrained, "weights_path", unavailable)
    config = dataclasses.replace(small, pretrained=False)
    assert build_model(config)(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 1)
    # no ImageNet weights, no RGB needed: any number of bands
    four_bands = build_model(config, input_shape=(None, None, 4))
    assert four_bands(np.zeros((1, 32, 32, 4), np.float32)).shape == (1, 32, 32, 1)


def test_symmetry_average_maps_every_copy_back() -> None:
    """d4 averaging makes any network equivariant: rotate/flip in, same rotate/flip out."""
    model = build_model(TINY)
    images = tf.constant(np.random.default_rng(0).random((2, 32, 48, 3)), tf.float32)
    plain = model(images, training=False).numpy()
    np.testing.assert_array_equal(symmetry_average(model, images, "none").numpy(), plain)
    averaged = symmetry_average(model, images, "d4").numpy()
    assert averaged.shape == plain.shape
    assert np.abs(averaged - plain).max() > 1e-4  # the untrained net is not symmetric
    turned = symmetry_average(model, tf.image.rot90(images), "d4").numpy()
    np.testing.assert_allclose(turned, np.rot90(averaged, axes=(1, 2)), atol=1e-5)
    mirrored = symmetry_average(model, images[:, :, ::-1], "flips").numpy()
    np.testing.assert_allclose(
        mirrored, symmetry_average(model, images, "flips").numpy()[:, :, ::-1], atol=1e-5
    )


def test_every_mode_is_a_subset_of_d4_so_one_set_of_passes_scores_them_all() -> None:
    """benchmarks/quality.py runs the 8 d4 passes once and averages each mode's subset."""
    model = build_model(TINY)
    images = tf.constant(np.random.default_rng(1).random((1, 32, 32, 3)), tf.float32)
    every = TEST_TIME_TRANSFORMS["d4"]
    outputs = np.stack([y.numpy() for y in symmetry_outputs(model, images, every)])
    for mode, transforms in TEST_TIME_TRANSFORMS.items():
        subset = outputs[[every.index(t) for t in transforms]].mean(axis=0)
        np.testing.assert_allclose(subset, symmetry_average(model, images, mode).numpy(), atol=1e-6)


def test_symmetry_outputs_batch_copies_of_one_shape_into_one_call() -> None:
    """Each copy's answer equals the model's answer on that copy alone, mapped back; a
    non-square input takes two calls for d4 (even and odd quarter turns), one for flips."""
    model = build_model(TINY)
    images = tf.constant(np.random.default_rng(2).random((2, 32, 64, 3)), tf.float32)
    calls: list[tuple[int, ...]] = []

    def counting(batch: tf.Tensor, training: bool) -> tf.Tensor:
        calls.append(tuple(batch.shape))
        return model(batch, training=training)

    every = TEST_TIME_TRANSFORMS["d4"]
    outputs = symmetry_outputs(counting, images, every)
    assert calls == [(8, 32, 64, 3), (8, 64, 32, 3)]
    for (flip, turns), got in zip(every, outputs, strict=True):
        x = images[:, :, ::-1] if flip else images
        alone = tf.image.rot90(model(tf.image.rot90(x, turns), training=False), 4 - turns % 4)
        expected = alone[:, :, ::-1] if flip else alone
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    calls.clear()
    symmetry_outputs(counting, images, TEST_TIME_TRANSFORMS["flips"])
    assert calls == [(8, 32, 64, 3)]
