"""The U-Net is fully convolutional: any multiple of 2**depth in, same size out."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from components.config import ModelConfig
from components.unet import build_unet, shift_decision_threshold

TINY = ModelConfig(depth=2, base_width=4, batch_norm=True, dropout=0.1)


def test_output_is_a_probability_map_of_the_input_size() -> None:
    model = build_unet(TINY)
    for shape in [(2, 32, 32, 3), (1, 64, 48, 3)]:
        probabilities = model.predict_on_batch(np.random.rand(*shape).astype(np.float32))
        assert probabilities.shape == shape[:3] + (1,)
        assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_widths_double_per_level() -> None:
    model = build_unet(ModelConfig(depth=3, base_width=8))
    filters = {
        layer.name: layer.filters
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.name.endswith("_conv0")
    }
    assert [filters[f"enc{i}_conv0"] for i in range(3)] == [8, 16, 32]
    assert filters["bottleneck_conv0"] == 64
    assert [filters[f"dec{i}_conv0"] for i in range(3)] == [8, 16, 32]


def test_batch_norm_and_dropout_are_optional() -> None:
    plain = build_unet(ModelConfig(depth=2, base_width=4, batch_norm=False, dropout=0.0))
    kinds = {type(layer) for layer in plain.layers}
    assert keras.layers.BatchNormalization not in kinds
    assert keras.layers.Dropout not in kinds
    layers = build_unet(TINY).layers
    assert {keras.layers.BatchNormalization, keras.layers.Dropout} <= {type(x) for x in layers}
    norms = [x for x in layers if isinstance(x, keras.layers.BatchNormalization)]
    assert all(x.momentum == TINY.batch_norm_momentum for x in norms)


def test_static_size_must_be_a_multiple_of_2_to_the_depth() -> None:
    with pytest.raises(ValueError, match="multiple"):
        build_unet(TINY, input_shape=(30, 32, 3))


def test_input_downsample_keeps_the_output_size_and_raises_the_size_multiple() -> None:
    config = ModelConfig(depth=2, base_width=4, input_downsample=2)
    assert config.size_multiple == 8
    model = build_unet(config)
    out = model(np.zeros((1, 24, 40, 3), np.float32))
    assert out.shape == (1, 24, 40, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_unet(config, input_shape=(20, 24, 3))


def test_shifted_threshold_moves_the_half_cut_and_keeps_the_ranking() -> None:
    model = build_unet(ModelConfig(depth=1, base_width=2, batch_norm=False, dropout=0.0))
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
    model = build_unet(ModelConfig(depth=1, base_width=2))
    with pytest.raises(ValueError, match="threshold"):
        shift_decision_threshold(model, 1.0)
