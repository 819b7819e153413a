"""Segmentation losses and pixel metrics that work in Keras training and in TFMA alike.

TFMA feeds Keras metrics labels/predictions per example (squeezed to [B,H,W]) with ONE
weight per example ([B,1]); stock Keras IoU / Precision / Recall / AUC then fail (they need
a weight per pixel) and BinaryAccuracy silently averages over the wrong axis. The classes
here broadcast the weight to every pixel and flatten pixels to [P,1] before the stock
update, so they give the same numbers in `model.fit` and in TFMA. They are registered as
Keras serialisable under package "tailings", and their class names do not collide with
TFMA's own metric names (TFMA would otherwise pick its own class and ignore `module`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf
import tf_keras as keras

from schemas.features import MASK_NODATA

if TYPE_CHECKING:
    import tensorflow_model_analysis as tfma

PACKAGE = "tailings"
THRESHOLD = 0.5  # probability above which a pixel is called tailings
TAILINGS_CLASS_ID = 1
DICE_SMOOTH = 1.0  # keeps dice defined (and its gradient sane) on tiles with no tailings
AUC_THRESHOLDS = 200  # Keras' default resolution of the ROC curve
MODULE = __name__  # "components.metrics": what tfma.MetricConfig(module=...) needs

# Metric names: the keys in Keras history (val_ prefixed for eval) and in TFMA results.
PIXEL_ACCURACY = "pixel_accuracy"
IOU = "iou"
PRECISION = "precision"
RECALL = "recall"
F1 = "f1"
AUC = "auc"
ALL_BACKGROUND_ACCURACY = "all_background_accuracy"
ACCURACY_GAIN = "accuracy_gain"
MEAN_TILE_IOU = "mean_tile_iou"

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _per_example_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean over every axis but the batch axis: one loss value per example."""
    axes = tf.range(1, tf.rank(values))
    return tf.reduce_sum(values * weights, axis=axes) / tf.maximum(
        tf.reduce_sum(weights, axis=axes), 1.0
    )


def _valid_labels(y_true: tf.Tensor, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels with `MASK_NODATA` pixels set to 0, 1/0 weights that drop those pixels).

    Training windows drawn from merged sites (`TrainConfig.mosaic="sites"`) mark pixels where
    no tile lies with `MASK_NODATA`: they count in no loss, as they count in no metric. Tiles
    and mosaics have none, so for them the losses are the plain means.
    """
    y_true = tf.cast(y_true, dtype)
    valid = tf.cast(tf.not_equal(y_true, float(MASK_NODATA)), dtype)
    return y_true * valid, valid


@keras.utils.register_keras_serializable(package=PACKAGE)
def bce(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Pixel-wise binary cross-entropy, averaged per example over its pixels with data -> [N]."""
    y_true, valid = _valid_labels(y_true, y_pred.dtype)
    return _per_example_mean(keras.backend.binary_crossentropy(y_true, y_pred), valid)


def _soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, axis: tf.Tensor | None) -> tf.Tensor:
    """1 - soft Dice with the sums taken over `axis` (None: over everything), pixels with
    data only."""
    y_true, valid = _valid_labels(y_true, y_pred.dtype)
    y_pred = y_pred * valid
    intersection = tf.reduce_sum(y_true * y_pred, axis=axis)
    total = tf.reduce_sum(y_true, axis=axis) + tf.reduce_sum(y_pred, axis=axis)
    return 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)


@keras.utils.register_keras_serializable(package=PACKAGE)
def dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 - soft Dice per example -> [N]; insensitive to how rare tailings pixels are."""
    return _soft_dice_loss(y_true, y_pred, axis=tf.range(1, tf.rank(y_pred)))


@keras.utils.register_keras_serializable(package=PACKAGE)
def batch_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 - soft Dice over all pixels of the batch, given to each example -> [N].

    Pooled like the Evaluator's IoU, so a facility weighs by its area: per-example Dice
    weighs a tile with 0.3 % tailings as much as one with 35 %.
    """
    loss = _soft_dice_loss(y_true, y_pred, axis=None)
    return loss * tf.ones(tf.shape(y_pred)[:1], y_pred.dtype)


@keras.utils.register_keras_serializable(package=PACKAGE)
def bce_batch_dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """BCE per example plus the batch's pooled Dice -> [N]."""
    return bce(y_true, y_pred) + batch_dice_loss(y_true, y_pred)


@keras.utils.register_keras_serializable(package=PACKAGE)
def bce_dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """BCE for calibrated per-pixel probabilities plus Dice for overlap -> [N]."""
    return bce(y_true, y_pred) + dice_loss(y_true, y_pred)


LOSS_FUNCTIONS: dict[str, LossFn] = {
    "bce": bce,
    "bce_dice": bce_dice,
    "bce_batch_dice": bce_batch_dice,
}


def get_loss(name: str) -> LossFn:
    """The loss function for `ModelConfig.loss`."""
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSS_FUNCTIONS)}") from None


def broadcast_sample_weight(sample_weight: Any, y_true: tf.Tensor) -> tf.Tensor:
    """Give every pixel its example's weight: [N], [N,1] or scalar -> y_true's shape."""
    weight = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32)
    target_rank = y_true.shape.rank
    if weight.shape.rank is None or target_rank is None:
        raise ValueError("sample_weight and y_true need a known rank")
    if weight.shape.rank != target_rank:
        # One weight per example: [N] (or [N,1], or a scalar) -> [N,1,...,1].
        weight = tf.reshape(weight, [-1] + [1] * (target_rank - 1))
    return tf.broadcast_to(weight, tf.shape(y_true))


def drop_nodata(y_true: tf.Tensor, sample_weight: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels with no-data pixels set to 0, per-pixel weights that are 0 there).

    Scene windows mark pixels where no tile lies with `MASK_NODATA`; every metric skips them.
    """
    y_true = tf.convert_to_tensor(y_true)
    weight = broadcast_sample_weight(1.0 if sample_weight is None else sample_weight, y_true)
    valid = tf.not_equal(tf.cast(y_true, tf.float32), float(MASK_NODATA))
    return tf.where(valid, y_true, tf.zeros_like(y_true)), weight * tf.cast(valid, tf.float32)


class _Pixelwise:
    """Mixin: broadcast per-example weights to pixels, then hand pixels as [P,1] to Keras.

    Flattening makes [B,H,W] (TFMA) and [B,H,W,1] (Keras) inputs identical to the metric.
    No-data pixels (`MASK_NODATA`) get weight 0.
    """

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        y_true, sample_weight = drop_nodata(y_true, sample_weight)
        y_pred = tf.convert_to_tensor(y_pred)
        return super().update_state(  # type: ignore[misc]
            tf.reshape(y_true, [-1, 1]),
            tf.reshape(y_pred, [-1, 1]),
            tf.reshape(sample_weight, [-1, 1]),
        )


@keras.utils.register_keras_serializable(package=PACKAGE)
class PixelAccuracy(_Pixelwise, keras.metrics.BinaryAccuracy):
    """Fraction of pixels classified correctly at `threshold`."""

    def __init__(
        self, name: str = PIXEL_ACCURACY, dtype: Any = None, threshold: float = THRESHOLD
    ) -> None:
        super().__init__(name=name, dtype=dtype, threshold=threshold)


@keras.utils.register_keras_serializable(package=PACKAGE)
class AllBackgroundAccuracy(PixelAccuracy):
    """Pixel accuracy of a model that predicts "no tailings" everywhere (ignores y_pred).

    Reported beside pixel accuracy: on the study's data it is ~0.9, the accuracy the study
    reported, so a model's pixel accuracy means something only well above it.
    """

    def __init__(
        self, name: str = ALL_BACKGROUND_ACCURACY, dtype: Any = None, threshold: float = THRESHOLD
    ) -> None:
        super().__init__(name=name, dtype=dtype, threshold=threshold)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        y_true = tf.convert_to_tensor(y_true)
        return super().update_state(y_true, tf.zeros_like(y_true), sample_weight)


@keras.utils.register_keras_serializable(package=PACKAGE)
class TailingsIoU(_Pixelwise, keras.metrics.BinaryIoU):
    """Intersection over union of the tailings class (not the mean over both classes)."""

    def __init__(
        self,
        target_class_ids: Sequence[int] = (TAILINGS_CLASS_ID,),
        threshold: float = THRESHOLD,
        name: str = IOU,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            target_class_ids=list(target_class_ids), threshold=threshold, name=name, dtype=dtype
        )


@keras.utils.register_keras_serializable(package=PACKAGE)
class TailingsPrecision(_Pixelwise, keras.metrics.Precision):
    """Precision of tailings pixels at `thresholds`."""

    def __init__(self, thresholds: Any = THRESHOLD, name: str = PRECISION, **kwargs: Any):
        super().__init__(thresholds=thresholds, name=name, **kwargs)


@keras.utils.register_keras_serializable(package=PACKAGE)
class TailingsRecall(_Pixelwise, keras.metrics.Recall):
    """Recall of tailings pixels at `thresholds`."""

    def __init__(self, thresholds: Any = THRESHOLD, name: str = RECALL, **kwargs: Any):
        super().__init__(thresholds=thresholds, name=name, **kwargs)


@keras.utils.register_keras_serializable(package=PACKAGE)
class TailingsAUC(_Pixelwise, keras.metrics.AUC):
    """Area under the pixel-level ROC curve: threshold-free ranking quality."""

    def __init__(self, num_thresholds: int = AUC_THRESHOLDS, name: str = AUC, **kwargs: Any):
        super().__init__(num_thresholds=num_thresholds, name=name, **kwargs)


class _ThresholdedSums(keras.metrics.Metric):
    """A metric of sums accumulated in weights, calling tailings above `threshold`."""

    def __init__(self, threshold: float, name: str, dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = threshold

    def reset_state(self) -> None:
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


class _F1Counts(_ThresholdedSums):
    """F1 from weighted TP/FP/FN counts accumulated over all pixels seen."""

    def __init__(self, threshold: float = THRESHOLD, name: str = F1, dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)
        self.true_positives = self.add_weight("true_positives", initializer="zeros")
        self.false_positives = self.add_weight("false_positives", initializer="zeros")
        self.false_negatives = self.add_weight("false_negatives", initializer="zeros")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        truth = tf.cast(y_true, self.dtype) > THRESHOLD
        predicted = tf.cast(y_pred, self.dtype) > self.threshold
        weight = (
            tf.ones_like(tf.cast(y_true, self.dtype))
            if sample_weight is None
            else tf.cast(sample_weight, self.dtype)
        )

        def weighted_sum(condition: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(tf.cast(condition, self.dtype) * weight)

        self.true_positives.assign_add(weighted_sum(truth & predicted))
        self.false_positives.assign_add(weighted_sum(~truth & predicted))
        self.false_negatives.assign_add(weighted_sum(truth & ~predicted))

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(
            2.0 * self.true_positives,
            2.0 * self.true_positives + self.false_positives + self.false_negatives,
        )


@keras.utils.register_keras_serializable(package=PACKAGE)
class TailingsF1(_Pixelwise, _F1Counts):
    """F1 of tailings pixels (harmonic mean of precision and recall over the whole set)."""


class _AccuracyGainSums(_ThresholdedSums):
    """Pixel accuracy minus the all-background accuracy, from weighted sums over all pixels."""

    def __init__(
        self, threshold: float = THRESHOLD, name: str = ACCURACY_GAIN, dtype: Any = None
    ) -> None:
        super().__init__(threshold=threshold, name=name, dtype=dtype)
        self.correct = self.add_weight("correct", initializer="zeros")
        self.background = self.add_weight("background", initializer="zeros")
        self.total = self.add_weight("total", initializer="zeros")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        truth = tf.cast(y_true, self.dtype) > THRESHOLD
        predicted = tf.cast(y_pred, self.dtype) > self.threshold
        weight = tf.cast(sample_weight, self.dtype)
        self.correct.assign_add(tf.reduce_sum(tf.cast(truth == predicted, self.dtype) * weight))
        self.background.assign_add(tf.reduce_sum(tf.cast(~truth, self.dtype) * weight))
        self.total.assign_add(tf.reduce_sum(weight))

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(self.correct - self.background, self.total)


@keras.utils.register_keras_serializable(package=PACKAGE)
class AccuracyGain(_Pixelwise, _AccuracyGainSums):
    """How far pixel accuracy is above predicting "no tailings" everywhere (same pixels).

    A threshold on it asks a model to beat the all-background baseline of the split it is
    judged on, whatever that split's class balance.
    """


@keras.utils.register_keras_serializable(package=PACKAGE)
class MeanTileIoU(_ThresholdedSums):
    """Tailings IoU of each example (tile), averaged over the examples by their weights.

    The pooled `iou` weighs every tile by its tailings area, so on a small eval split one
    large facility can decide it (on the study's 17 eval tiles one holds 42 % of the wrong
    pixels); this weighs every tile alike. Reported beside `iou`, not a blessing threshold.
    A tile with tailings in neither truth nor prediction scores 1.
    """

    def __init__(self, threshold: float = THRESHOLD, name: str = MEAN_TILE_IOU, dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)
        self.total = self.add_weight("total", initializer="zeros")
        self.weight = self.add_weight("weight", initializer="zeros")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = tf.convert_to_tensor(y_true)
        batch = tf.shape(y_true)[0]
        # [N,H,W,1] (Keras) or [N,H,W] (TFMA) -> one row of pixels per example; no data out
        valid = tf.reshape(tf.not_equal(tf.cast(y_true, self.dtype), MASK_NODATA), [batch, -1])
        truth = tf.reshape(tf.cast(y_true, self.dtype) == 1.0, [batch, -1]) & valid
        predicted = tf.reshape(tf.cast(y_pred, self.dtype) > self.threshold, [batch, -1]) & valid
        intersection = tf.reduce_sum(tf.cast(truth & predicted, self.dtype), axis=1)
        union = tf.reduce_sum(tf.cast(truth | predicted, self.dtype), axis=1)
        iou = tf.where(union > 0, intersection / tf.maximum(union, 1.0), 1.0)
        weight = tf.ones([batch], self.dtype)
        if sample_weight is not None:  # [N], [N,1] or a scalar -> [N]
            weight = tf.broadcast_to(tf.reshape(tf.cast(sample_weight, self.dtype), [-1]), [batch])
        self.total.assign_add(tf.reduce_sum(iou * weight))
        self.weight.assign_add(tf.reduce_sum(weight))

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(self.total, self.weight)


# (class, name) of every pixel metric, for TFMA configs and tests.
PIXEL_METRICS: tuple[tuple[type[keras.metrics.Metric], str], ...] = (
    (PixelAccuracy, PIXEL_ACCURACY),
    (TailingsIoU, IOU),
    (TailingsPrecision, PRECISION),
    (TailingsRecall, RECALL),
    (TailingsF1, F1),
    (TailingsAUC, AUC),
)


# What the Evaluator reports: the pixel metrics, the all-background baseline and the IoU
# per tile averaged.
EVALUATED_METRICS = PIXEL_METRICS + (
    (AllBackgroundAccuracy, ALL_BACKGROUND_ACCURACY),
    (AccuracyGain, ACCURACY_GAIN),
    (MeanTileIoU, MEAN_TILE_IOU),
)


def training_metrics() -> list[keras.metrics.Metric]:
    """Fresh metric objects for `model.compile` (names match the TFMA configs)."""
    return [cls(name=name) for cls, name in PIXEL_METRICS]


def tfma_metric_configs() -> list[tfma.MetricConfig]:
    """`tfma.MetricConfig`s for the pixel metrics, plus TFMA's example count.

    Explicit names make TFMA report the same keys as Keras training ("iou", not TFMA's
    derived "tailings_io_u"); if TFMA also loads the model's compiled metrics, same-named
    entries merge instead of appearing twice.
    """
    import tensorflow_model_analysis as tfma

    return [tfma.MetricConfig(class_name="ExampleCount")] + [
        tfma.MetricConfig(class_name=cls.__name__, module=MODULE, config=json.dumps({"name": name}))
        for cls, name in EVALUATED_METRICS
    ]
