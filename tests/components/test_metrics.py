"""Pixel metrics with TFMA-style inputs (one weight per example) and the losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components import metrics as M

N, H, W = 3, 8, 8
WEIGHTS = np.array([1.0, 0.0, 2.0], np.float32)  # the middle example must not count


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = (rng.random((N, H, W, 1)) > 0.6).astype(np.float32)
    y_pred = rng.random((N, H, W, 1)).astype(np.float32)
    return y_true, y_pred


def _expected(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Reference values: numpy counts, or the stock metric with explicit per-pixel weights."""
    pixel_weights = np.broadcast_to(WEIGHTS[:, None, None, None], y_true.shape)
    truth, predicted = y_true > 0.5, y_pred > M.THRESHOLD
    tp = np.sum(pixel_weights * (truth & predicted))
    fp = np.sum(pixel_weights * (~truth & predicted))
    fn = np.sum(pixel_weights * (truth & ~predicted))
    if name == M.AUC:
        stock = keras.metrics.AUC(num_thresholds=M.AUC_THRESHOLDS)
        stock.update_state(y_true, y_pred, sample_weight=pixel_weights)
        return float(stock.result())
    return {
        M.PIXEL_ACCURACY: np.sum(pixel_weights * (truth == predicted)) / np.sum(pixel_weights),
        M.IOU: tp / (tp + fp + fn),
        M.PRECISION: tp / (tp + fp),
        M.RECALL: tp / (tp + fn),
        M.F1: 2 * tp / (2 * tp + fp + fn),
    }[name]


# Keras training passes [N,H,W,1]; TFMA squeezes each example to [H,W] and weights to [N,1].
INPUT_LAYOUTS = {
    "keras_weights_N": lambda y, p: (y, p, WEIGHTS),
    "keras_weights_N1": lambda y, p: (y, p, WEIGHTS[:, None]),
    "tfma_squeezed": lambda y, p: (y[..., 0], p[..., 0], WEIGHTS[:, None]),
}


@pytest.mark.parametrize("layout", sorted(INPUT_LAYOUTS))
@pytest.mark.parametrize("metric_class, name", M.PIXEL_METRICS, ids=[n for _, n in M.PIXEL_METRICS])
def test_per_example_weight_is_broadcast_to_pixels(metric_class, name, layout) -> None:
    y_true, y_pred = _data()
    metric = metric_class()
    assert metric.name == name
    metric.update_state(*INPUT_LAYOUTS[layout](y_true, y_pred))
    np.testing.assert_allclose(float(metric.result()), _expected(name, y_true, y_pred), rtol=1e-5)


@pytest.mark.parametrize("metric_class, name", M.PIXEL_METRICS, ids=[n for _, n in M.PIXEL_METRICS])
def test_zero_weight_example_is_ignored(metric_class, name) -> None:
    y_true, y_pred = _data()
    changed = y_true.copy()
    changed[1] = 1.0 - changed[1]
    results = []
    for labels in (y_true, changed):
        metric = metric_class()
        metric.update_state(labels, y_pred, WEIGHTS)
        results.append(float(metric.result()))
    assert results[0] == pytest.approx(results[1])


@pytest.mark.parametrize("metric_class, name", M.PIXEL_METRICS, ids=[n for _, n in M.PIXEL_METRICS])
def test_unweighted_matches_keras_training_use(metric_class, name) -> None:
    y_true, y_pred = _data(seed=1)
    metric = metric_class()
    metric.update_state(y_true, y_pred)
    expected = metric_class()
    expected.update_state(y_true, y_pred, np.ones(N, np.float32))
    assert float(metric.result()) == pytest.approx(float(expected.result()))


@pytest.mark.parametrize("metric_class, name", M.PIXEL_METRICS, ids=[n for _, n in M.PIXEL_METRICS])
def test_keras_serialisation_round_trip(metric_class, name) -> None:
    metric = metric_class()
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is metric_class
    assert restored.get_config() == metric.get_config()
    assert keras.utils.get_registered_name(metric_class) == f"{M.PACKAGE}>{metric_class.__name__}"


def test_tfma_instantiates_the_configured_metrics() -> None:
    from tensorflow_model_analysis.metrics import metric_specs

    configs = M.tfma_metric_configs()
    ours = [config for config in configs if config.module == M.MODULE]
    assert len(ours) == len(M.EVALUATED_METRICS)
    for config, (metric_class, name) in zip(ours, M.EVALUATED_METRICS, strict=True):
        metric = metric_specs.metric_instance(config)
        assert type(metric) is metric_class
        assert metric.name == name == json.loads(config.config)["name"]


@pytest.mark.parametrize("layout", sorted(INPUT_LAYOUTS))
def test_mean_tile_iou_averages_each_tiles_iou_by_its_weight(layout) -> None:
    y_true, y_pred = _data()
    y_true[2], y_pred[2] = 0.0, 0.1  # no tailings in truth or prediction: IoU 1
    truth, predicted = y_true > 0.5, y_pred > M.THRESHOLD
    per_tile = [np.sum(truth[i] & predicted[i]) / np.sum(truth[i] | predicted[i]) for i in (0, 1)]
    per_tile.append(1.0)
    metric = M.MeanTileIoU()
    metric.update_state(*INPUT_LAYOUTS[layout](y_true, y_pred))
    want = np.sum(WEIGHTS * np.array(per_tile)) / np.sum(WEIGHTS)  # the 0-weight tile drops out
    assert float(metric.result()) == pytest.approx(want, rel=1e-5)
    assert metric.name == M.MEAN_TILE_IOU
    unweighted = M.MeanTileIoU()
    unweighted.update_state(y_true, y_pred)
    assert float(unweighted.result()) == pytest.approx(np.mean(per_tile), rel=1e-5)


def test_mean_tile_iou_weighs_tiles_alike_where_pooled_iou_weighs_area() -> None:
    """A large tile missed and a small tile hit: pooled IoU ~0, the tile mean 0.5."""
    y_true = np.zeros((2, 8, 8, 1), np.float32)
    y_pred = np.zeros_like(y_true)
    y_true[0] = 1.0  # all tailings, predicted none
    y_true[1, 0, 0], y_pred[1, 0, 0] = 1.0, 1.0  # one pixel, hit
    tiles, pooled = M.MeanTileIoU(), M.TailingsIoU()
    for metric in (tiles, pooled):
        metric.update_state(y_true, y_pred)
    assert float(tiles.result()) == pytest.approx(0.5)
    assert float(pooled.result()) == pytest.approx(1 / 65)
    restored = keras.metrics.deserialize(keras.metrics.serialize(tiles))
    assert type(restored) is M.MeanTileIoU and restored.get_config() == tiles.get_config()


def test_losses_are_per_example_and_sensible() -> None:
    y_true, y_pred = _data()
    y_true_t, y_pred_t = tf.constant(y_true), tf.constant(y_pred)
    bce = M.bce(y_true_t, y_pred_t).numpy()
    assert bce.shape == (N,)
    stock = keras.losses.binary_crossentropy(y_true_t, y_pred_t).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(bce, stock, rtol=1e-5)
    np.testing.assert_allclose(
        M.bce_dice(y_true_t, y_pred_t).numpy(), bce + M.dice_loss(y_true_t, y_pred_t).numpy()
    )
    perfect = M.dice_loss(y_true_t, y_true_t).numpy()
    inverted = M.dice_loss(y_true_t, 1.0 - y_true_t).numpy()
    np.testing.assert_allclose(perfect, 0.0, atol=1e-6)
    assert np.all(inverted > 0.9)


def test_batch_dice_pools_the_batch_so_large_facilities_weigh_more() -> None:
    y_true = np.zeros((2, 8, 8, 1), np.float32)
    y_true[0] = 1.0  # a tile full of tailings
    y_true[1, 0, 0] = 1.0  # and a tile with one tailings pixel
    y_pred = y_true.copy()
    y_pred[1] = 0.0  # the one pixel is missed
    y_true_t, y_pred_t = tf.constant(y_true), tf.constant(y_pred)
    pooled = M.batch_dice_loss(y_true_t, y_pred_t).numpy()
    assert pooled.shape == (2,) and pooled[0] == pooled[1]
    expected = 1.0 - (2 * 64 + M.DICE_SMOOTH) / (65 + 64 + M.DICE_SMOOTH)
    np.testing.assert_allclose(pooled[0], expected, rtol=1e-5)
    # per-example Dice counts the missed pixel as half the batch's error
    assert M.dice_loss(y_true_t, y_pred_t).numpy().mean() > 10 * pooled[0]
    np.testing.assert_allclose(
        M.bce_batch_dice(y_true_t, y_pred_t).numpy(), M.bce(y_true_t, y_pred_t).numpy() + pooled
    )
    with tf.GradientTape() as tape:  # trainable: the batch's Dice reaches every example
        prediction = tf.Variable(tf.fill(y_pred.shape, 0.5))
        loss = tf.reduce_mean(M.batch_dice_loss(y_true_t, prediction))
    assert np.all(np.isfinite(tape.gradient(loss, prediction).numpy()))


def test_get_loss() -> None:
    assert M.get_loss("bce") is M.bce
    assert M.get_loss("bce_dice") is M.bce_dice
    assert M.get_loss("bce_batch_dice") is M.bce_batch_dice
    with pytest.raises(ValueError):
        M.get_loss("focal")


def test_all_background_accuracy_ignores_predictions():
    from components.metrics import AllBackgroundAccuracy

    labels = np.zeros((2, 4, 4, 1), np.float32)
    labels[0, :2] = 1.0  # 8 of 32 pixels are tailings
    metric = AllBackgroundAccuracy()
    metric.update_state(labels, np.ones_like(labels), sample_weight=np.array([1.0, 1.0]))
    assert metric.result().numpy() == pytest.approx(0.75)
