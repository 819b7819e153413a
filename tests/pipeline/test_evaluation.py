"""Reading TFMA's metrics: intervals clipped to a metric's range, none where the bootstrap
gave NaN (a per-site slice too small for some samples)."""

import math

from tensorflow_model_analysis.proto import metrics_for_slice_pb2

from pipeline.evaluation import _estimate, _ranges


def _key_value(name: str, value: float, low: float | None = None, high: float | None = None):
    kv = metrics_for_slice_pb2.MetricsForSlice.MetricKeyAndValue()
    kv.key.name = name
    kv.value.double_value.value = value
    if low is not None:
        kv.confidence_interval.lower_bound.double_value.value = low
        kv.confidence_interval.upper_bound.double_value.value = high
    return kv


def test_site_intervals_are_clipped_and_nan_intervals_dropped():
    ranges = _ranges()
    clipped = _estimate(_key_value("iou", 0.9, -0.56, 1.38), ranges)
    assert (clipped.value, clipped.low, clipped.high) == (0.9, 0.0, 1.0)
    nan = _estimate(_key_value("facility_recall", 1.0, math.nan, math.nan), ranges)
    assert (nan.value, nan.low, nan.high) == (1.0, None, None) and str(nan) == "1.0000"
    none = _estimate(_key_value("iou", 0.5), ranges)
    assert none.low is None and none.high is None
