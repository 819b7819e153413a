"""The blessing gate: the pipeline's EvalConfig judged by TFMA's own metrics validator.

TFX's Evaluator blesses a model when `tfma`'s validator finds no failure for the metrics it
computed; these tests hand that validator the metrics a model would get, computed with the
pipeline's own metric classes where it matters (an all-background model).
"""

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_types

from components import metrics
from pipeline.config import PipelineConfig, Thresholds
from pipeline.pipeline import eval_config
from schemas.features import MASK_NODATA

CANDIDATE = tfma.CANDIDATE_KEY
GOOD = {
    "pixel_accuracy": 0.96,
    "accuracy_gain": 0.05,
    "facility_recall": 0.9,
    "iou": 0.6,
}


def as_tfx_runs_it(config: tfma.EvalConfig, has_baseline: bool) -> tfma.EvalConfig:
    """The EvalConfig as TFX's Evaluator hands it to TFMA (baseline spec added, or change
    thresholds waived by the rubber stamp when there is no blessed model yet)."""
    return tfma.utils.update_eval_config_with_defaults(
        config, has_baseline=has_baseline, rubber_stamp=True
    )


def validate(config, values, changes=None, slice_key=()):
    named = changes is not None
    config = as_tfx_runs_it(config, has_baseline=named)
    found = {
        metric_types.MetricKey(name, model_name=CANDIDATE if named else ""): v
        for name, v in values.items()
    }
    for name, change in (changes or {}).items():
        found[metric_types.MetricKey(name, model_name=CANDIDATE, is_diff=True)] = change
    return metrics_validator.validate_metrics((slice_key, found), config)


def test_a_good_model_passes_and_each_gate_alone_can_fail():
    config = eval_config(PipelineConfig())
    assert validate(config, GOOD).validation_ok
    for name, bound in Thresholds().lower_bounds().items():
        worse = {**GOOD, name: bound - 1e-3}
        result = validate(config, worse)
        assert not result.validation_ok, name
        failed = [
            f.metric_key.name for s in result.metric_validations_per_slice for f in s.failures
        ]
        assert failed == [name]


def test_gates_apply_to_the_whole_split_not_to_each_tile():
    config = eval_config(PipelineConfig())
    bad = {name: 0.0 for name in GOOD}
    tile = (("pair_id", b"img_56"),)
    assert validate(config, bad, slice_key=tile).validation_ok
    assert not validate(config, bad).validation_ok


def test_an_all_background_model_is_never_blessed():
    """Its metrics, computed by the Evaluator's own classes, fail the default gate."""
    rng = np.random.default_rng(0)
    labels = (rng.random((4, 32, 32)) < 0.1).astype(np.float32)
    labels[0, :, :4] = MASK_NODATA  # a scene window's no-data edge
    labels[1, 8:24, 8:24] = 1.0
    predictions = np.zeros_like(labels)
    values = {}
    for cls, name in metrics.EVALUATED_METRICS:
        metric = cls(name=name)
        metric.update_state(labels, predictions, np.ones((4, 1), np.float32))
        values[name] = float(metric.result())
    assert values["accuracy_gain"] == pytest.approx(0.0, abs=1e-7)
    assert values["pixel_accuracy"] == pytest.approx(values["all_background_accuracy"])
    values["facility_recall"] = 0.0  # nothing predicted: no facility found
    result = validate(eval_config(PipelineConfig()), values)
    assert not result.validation_ok
    # Even when a split has so little tailings that all-background clears 0.93, the gain
    # and IoU gates still refuse it.
    lenient = eval_config(PipelineConfig(thresholds=Thresholds(min_pixel_accuracy=0.0)))
    assert not validate(lenient, {**values, "pixel_accuracy": 0.99}).validation_ok


@pytest.mark.parametrize("metric,drop", Thresholds().max_drop)
def test_regression_beyond_the_measured_spread_is_refused_within_it_passes(metric, drop):
    config = eval_config(PipelineConfig())
    unchanged = {name: 0.0 for name, _ in Thresholds().max_drop}
    within = validate(config, GOOD, changes={**unchanged, metric: -0.9 * drop})
    assert within.validation_ok
    beyond = validate(config, GOOD, changes={**unchanged, metric: -1.1 * drop})
    assert not beyond.validation_ok
    failed = [f.metric_key for s in beyond.metric_validations_per_slice for f in s.failures]
    assert [(k.name, k.is_diff) for k in failed] == [(metric, True)]


def test_thresholds_naming_an_unknown_metric_are_refused():
    cfg = PipelineConfig(thresholds=Thresholds(max_drop=(("iuo", 0.1),)))
    with pytest.raises(ValueError, match="iuo"):
        eval_config(cfg)


def test_bootstrap_intervals_and_per_tile_slices_are_configured():
    config = eval_config(PipelineConfig(), gate=False)
    assert config.options.compute_confidence_intervals.value
    assert (
        config.options.confidence_intervals.method
        == tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP
    )
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["site_id"], ["pair_id"]]
    assert not any(
        c.per_slice_thresholds or c.HasField("threshold") for c in config.metrics_specs[0].metrics
    )
