"""Facility and per-tile TFMA metrics against hand-computed numbers, directly and in Beam.

Tiles are 32x32 with 10 m pixels in an equal-area CRS (EPSG:6933, WGS 84 / EASE-Grid 2.0),
where a pixel's ground (geodesic) area is its grid area, 0.01 ha (to 5e-10, the accuracy of
PROJ's inverse projection there), so a facility of N pixels has N / 100 ha and the expected
values below can be checked by hand. In UTM the ground area of a 10 m pixel is not 100 m^2
(100.053-100.055 m^2 at 600 km E, 21 S: the scale factor). Inputs go through TFMA's own
preprocessing (the computation's FeaturePreprocessor and `to_standard_metric_inputs`), the way
the Evaluator feeds its combiners.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Sequence

import apache_beam as beam
import numpy as np
import pytest
from affine import Affine
from apache_beam.testing import util as beam_testing
from rasterio.crs import CRS
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_specs, metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from components import facility_metrics as FM
from components.metrics import THRESHOLD
from data import geo
from schemas import features

SIZE = 32
NODATA = float(features.MASK_NODATA)
EQUAL_AREA_WKT = CRS.from_epsg(6933).to_wkt().encode()
# As TFMA hands the raw features over: bytes [1] (object) and float32 [6]. About 16 N, 6 E.
TILE_TRANSFORM = np.array([10.0, 0.0, 600000.0, 0.0, -10.0, 2000000.0], np.float32)
YES, NO = 0.9, 0.1  # predicted probabilities on either side of THRESHOLD

Box = tuple[int, int, int, int]  # row0, row1, col0, col1 (exclusive ends)


def _tile(boxes: Sequence[Box] = (), value: float = 1.0, fill: float = 0.0) -> np.ndarray:
    tile = np.full((SIZE, SIZE), fill, np.float32)
    for r0, r1, c0, c1 in boxes:
        tile[r0:r1, c0:c1] = value
    return tile


def _predict(boxes: Sequence[Box] = ()) -> np.ndarray:
    return _tile(boxes, value=YES, fill=NO)


def _example(
    label: np.ndarray,
    prediction: np.ndarray,
    weight: float = 1.0,
    *,
    wkt: bytes = EQUAL_AREA_WKT,
    transform: np.ndarray = TILE_TRANSFORM,
    channel: bool = True,
) -> dict:
    """One unbatched TFMA extract: [H,W,1] label and prediction (as the Evaluator gives them)."""
    if channel:
        label, prediction = label[..., None], prediction[..., None]
    return {
        constants.LABELS_KEY: label,
        constants.PREDICTIONS_KEY: prediction,
        constants.EXAMPLE_WEIGHTS_KEY: np.array([weight], np.float32),
        constants.FEATURES_KEY: {
            features.CRS_WKT: np.array([wkt], dtype=object),
            features.TRANSFORM: transform,
            features.PAIR_ID: np.array([b"pair"], dtype=object),
        },
    }


def _metric_inputs(
    extracts: dict, computations: Sequence[metric_types.MetricComputation]
) -> list[metric_types.StandardMetricInputs]:
    """What TFMA's _PreprocessorDoFn hands the combiners: one merged standard preprocessor."""
    preprocessors = [p for c in computations for p in (c.preprocessors or [])] or [
        metric_types.StandardMetricInputsPreprocessor()
    ]
    merged = metric_types.StandardMetricInputsPreprocessorList(preprocessors)
    return [
        metric_util.to_standard_metric_inputs(
            processed, include_any_feature=constants.FEATURES_KEY in merged.include_filter
        )
        for processed in merged.process(extracts)
    ]


def _accumulate(computation: metric_types.MetricComputation, examples: Sequence[dict]):
    combiner = computation.combiner
    accumulator = combiner.create_accumulator()
    for example in examples:
        for inputs in _metric_inputs(example, [computation]):
            accumulator = combiner.add_input(accumulator, inputs)
    return accumulator


def _value(computation: metric_types.MetricComputation, accumulator) -> float:
    (value,) = computation.combiner.extract_output(accumulator).values()
    return value


def _compute(
    metric: metric_types.Metric, examples: Sequence[dict], example_weighted: bool = True
) -> float:
    (computation,) = metric.computations(example_weighted=example_weighted)
    return _value(computation, _accumulate(computation, examples))


def _same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-9)


# --- A split with every case, and its hand-computed metrics ---------------------------------

# A (weight 1): facilities F1 and F2 (64 px = 0.64 ha each); F1 predicted, F2 missed; an
#   unlabelled predicted blob (64 px). Facilities 2 (1 found), predicted regions 2 (1 labelled);
#   labelled 128 px, predicted 128 px, wrong 128 px, area error |1.28 - 1.28| = 0.
EXAMPLE_A = (_tile([(2, 10, 2, 10), (20, 28, 20, 28)]), _predict([(2, 10, 2, 10), (2, 10, 20, 28)]))
# B (weight 2): columns 24.. are nodata (768 valid px), with a prediction over part of them
#   (ignored). Facility of 100 px (1 ha) half predicted: found; the predicted half is exactly
#   0.5 ha, so a region, all labelled. A 4-px prediction is too small for a region.
#   labelled 100, predicted 54, wrong 50 + 4 = 54, area error |0.54 - 1.00| = 0.46.
EXAMPLE_B = (
    np.where(_tile([(0, SIZE, 24, SIZE)]) == 1, NODATA, _tile([(4, 14, 4, 14)])),
    _predict([(4, 14, 4, 9), (20, 22, 4, 6), (16, 32, 24, 32)]),
)
# C (weight 0): would change every metric if it counted (label 512 px missed, prediction
#   256 px unlabelled, area error 2.56).
EXAMPLE_C = (_tile([(0, 16, 0, SIZE)]), _predict([(16, 24, 0, SIZE)]))
# D (weight 1): facility of 100 px found by a 200-px predicted region (half labelled:
#   confirmed) and an unlabelled predicted blob of 70 px (0.7 ha). Facilities 1 (found),
#   predicted regions 2 (1 confirmed); labelled 100, predicted 270, wrong 170,
#   area error |2.70 - 1.00| = 1.7.
EXAMPLE_D = (_tile([(10, 20, 10, 20)]), _predict([(10, 20, 10, 30), (25, 32, 0, 10)]))

SPLIT = [(*EXAMPLE_A, 1.0), (*EXAMPLE_B, 2.0), (*EXAMPLE_C, 0.0), (*EXAMPLE_D, 1.0)]
VALID = 1024 + 2 * 768 + 1024
SPLIT_EXPECTED = {
    FM.FACILITY_RECALL: (1 + 2 * 1 + 1) / (2 + 2 * 1 + 1),
    FM.FACILITY_PRECISION: (1 + 2 * 1 + 1) / (2 + 2 * 1 + 2),
    FM.MEDIAN_AREA_ERROR_HA: 0.46,  # of 0, 0.46, 1.7 (C left out)
    FM.LABELLED_SHARE: (128 + 2 * 100 + 100) / VALID,
    FM.PREDICTED_SHARE: (128 + 2 * 54 + 270) / VALID,
    FM.WRONG_PIXELS: 128 + 2 * 54 + 170,
    FM.VALID_PIXELS: VALID,
}


def _split_examples(channel: bool = True) -> list[dict]:
    return [_example(label, pred, w, channel=channel) for label, pred, w in SPLIT]


# --- Facility recall and precision ----------------------------------------------------------


def test_one_of_two_facilities_found_gives_recall_half() -> None:
    assert _compute(FM.FacilityRecall(), [_example(*EXAMPLE_A)]) == 0.5


def test_unlabelled_predicted_blob_lowers_precision() -> None:
    label, prediction = EXAMPLE_A
    assert _compute(FM.FacilityPrecision(), [_example(label, prediction)]) == 0.5
    without_blob = _predict([(2, 10, 2, 10)])
    assert _compute(FM.FacilityPrecision(), [_example(label, without_blob)]) == 1.0
    assert math.isnan(_compute(FM.FacilityPrecision(), [_example(label, _predict())]))


@pytest.mark.parametrize("min_overlap, expected", [(0.1, 0.0), (0.05, 1.0), (0.04, 1.0)])
def test_facility_is_found_when_enough_of_its_area_is_predicted(min_overlap, expected) -> None:
    facility = _tile([(10, 20, 10, 20)])  # 100 px = 1 ha
    five_percent = _predict([(10, 11, 10, 15)])  # 5 px inside it
    metric = FM.FacilityRecall(min_overlap=min_overlap)
    assert _compute(metric, [_example(facility, five_percent)]) == expected


def test_regions_below_min_area_are_ignored() -> None:
    label = _tile([(0, 7, 0, 7), (20, 28, 20, 28)])  # 49 px (0.49 ha) and 64 px (0.64 ha)
    prediction = _predict([(0, 7, 0, 7)])  # finds only the small one
    example = [_example(label, prediction)]
    assert _compute(FM.FacilityRecall(), example) == 0.0
    assert math.isnan(_compute(FM.FacilityPrecision(), example))  # the 49-px region is no region
    assert _compute(FM.FacilityRecall(min_area_ha=0.49), example) == 0.5
    assert _compute(FM.FacilityPrecision(min_area_ha=0.49), example) == 1.0


def test_regions_are_8_connected() -> None:
    # Two 5x5 blocks (0.25 ha each) touching at one corner: one facility of 0.5 ha.
    label = _tile([(0, 5, 0, 5), (5, 10, 5, 10)])
    prediction = _predict([(0, 5, 0, 5)])  # half of it
    pixel_m2 = np.full((SIZE, SIZE), 100.0)
    tile = FM.analyse_tile(label, prediction, pixel_m2=pixel_m2, regions=True)
    assert (tile.labelled_facilities, tile.found_facilities) == (1, 1)
    small = FM.analyse_tile(label, prediction, pixel_m2=pixel_m2, regions=True, min_area_ha=0.25)
    assert (small.labelled_facilities, small.found_facilities) == (1, 1)  # not 2 of 0.25 ha
    assert _compute(FM.FacilityRecall(), [_example(label, prediction)]) == 1.0


def test_nodata_pixels_are_in_no_region_and_no_share() -> None:
    label = _tile([(4, 12, 4, 12)])  # a facility of 64 px
    label[20:30, 14:16] = 1  # a 20-px strip of tailings along the nodata edge
    label[:, 16:] = NODATA  # the right half: 512 px of no data
    # Predicted: the facility; a 10x10 blob wholly over nodata; an 8x8 blob (rows 20..27,
    # cols 13..20) of which only 24 px are valid (0.24 ha: no region), 16 of them on the strip.
    prediction = _predict([(4, 12, 4, 12), (0, 10, 20, 30), (20, 28, 13, 21)])
    tile = FM.analyse_tile(label, prediction, pixel_m2=np.full((SIZE, SIZE), 100.0), regions=True)
    # Were nodata (255) tailings, the strip and the right half would be a second facility,
    # and both blobs predicted regions.
    assert (tile.labelled_facilities, tile.found_facilities) == (1, 1)
    assert (tile.predicted_regions, tile.confirmed_regions) == (1, 1)
    example = [_example(label, prediction)]
    assert _compute(FM.FacilityPrecision(), example) == 1.0
    assert _compute(FM.FacilityRecall(), example) == 1.0
    assert _compute(FM.ValidPixels(), example) == 512
    assert _compute(FM.LabelledShare(), example) == (64 + 20) / 512
    assert _compute(FM.PredictedShare(), example) == (64 + 24) / 512
    # Wrong: 4 strip pixels below the blob's rows, and the blob's 8 valid pixels in column 13.
    assert _compute(FM.WrongPixels(), example) == 4 + 8
    error = _compute(FM.MedianAreaErrorHa(), example)
    assert error == pytest.approx(((64 + 24) - (64 + 20)) / 100)


# --- Areas and the median area error --------------------------------------------------------


def test_median_area_error_over_examples_in_hectares() -> None:
    facility = (0, 10, 0, 10)  # 100 px = 1 ha
    examples = [
        _example(_tile([facility]), _predict([(0, 10, 0, 9)])),  # 90 px: error 0.1 ha
        _example(_tile([facility]), _predict([(0, 10, 0, 5)])),  # 50 px: error 0.5 ha
        _example(_tile([facility]), _predict([(0, 13, 0, 10)])),  # 130 px: error 0.3 ha
        _example(_tile(), _predict([(0, 20, 0, 20)]), weight=0.0),  # error 4 ha: left out
    ]
    assert _compute(FM.MedianAreaErrorHa(), examples) == pytest.approx(0.3)
    # Unweighted, the fourth example counts: median of 0.1, 0.3, 0.5, 4.0.
    unweighted = _compute(FM.MedianAreaErrorHa(), examples, example_weighted=False)
    assert unweighted == pytest.approx(0.4)
    assert math.isnan(_compute(FM.MedianAreaErrorHa(), examples[3:]))


def test_geographic_areas_come_from_pixel_areas() -> None:
    wgs84 = CRS.from_epsg(4326)
    transform = np.array([1e-4, 0.0, -44.6, 0.0, -1e-4, -21.0], np.float32)
    label = _tile([(3, 20, 5, 15)])
    example = _example(label, _predict(), wkt=wgs84.to_wkt().encode(), transform=transform)
    areas = geo.pixel_areas(Affine(*transform.astype(np.float64)), wgs84, SIZE, SIZE)
    expected_ha = np.broadcast_to(areas, (SIZE, SIZE))[3:20, 5:15].sum() / 1e4
    assert _compute(FM.MedianAreaErrorHa(), [example]) == pytest.approx(expected_ha, rel=1e-12)
    assert 1.5 < expected_ha < 2.0  # ~10.4 m x 11.1 m pixels, 170 of them


def test_missing_georeference_is_a_clear_error() -> None:
    example = _example(*EXAMPLE_A)
    del example[constants.FEATURES_KEY][features.TRANSFORM]
    with pytest.raises(ValueError, match="'transform' is missing"):
        _compute(FM.FacilityRecall(), [example])
    example[constants.FEATURES_KEY] = {features.PAIR_ID: np.array([b"pair"], dtype=object)}
    with pytest.raises(ValueError, match="'crs_wkt' is missing"):
        _compute(FM.MedianAreaErrorHa(), [example])
    assert _compute(FM.ValidPixels(), [example]) == SIZE * SIZE  # needs no areas


def test_nested_feature_values_are_accepted() -> None:
    nested = _example(*EXAMPLE_A)
    nested[constants.FEATURES_KEY] = {
        features.CRS_WKT: [[EQUAL_AREA_WKT.decode()]],
        features.TRANSFORM: [TILE_TRANSFORM.tolist()],
    }
    # 0 but for the pixel areas' rounding: in this tile they differ by up to 2.2e-8 m^2
    # (measured), so two 64-pixel blocks by up to 1.4e-6 m^2 = 1.4e-10 ha.
    assert _compute(FM.MedianAreaErrorHa(), [nested]) == pytest.approx(0.0, abs=2e-10)
    assert _compute(FM.FacilityRecall(), [nested]) == 0.5


# --- Weights, layouts, merging --------------------------------------------------------------


def test_example_weights_scale_and_weight_zero_drops() -> None:
    found = _example(_tile([(0, 8, 0, 8)]), _predict([(0, 8, 0, 8)]), weight=2.0)
    two_missed = _example(_tile([(0, 8, 0, 8), (20, 28, 20, 28)]), _predict(), weight=1.0)
    dropped = _example(_tile([(0, 8, 0, 8), (20, 28, 20, 28)]), _predict(), weight=0.0)
    examples = [found, two_missed, dropped]
    assert _compute(FM.FacilityRecall(), examples) == (2 * 1) / (2 * 1 + 1 * 2)
    assert _compute(FM.FacilityRecall(), examples, example_weighted=False) == 1 / 5
    assert _compute(FM.ValidPixels(), examples) == 3 * SIZE * SIZE
    assert _compute(FM.WrongPixels(), examples) == 128


def test_negative_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="example weight"):
        _compute(FM.ValidPixels(), [_example(*EXAMPLE_A, weight=-1.0)])


@pytest.mark.parametrize("channel", [True, False], ids=["HW1", "HW"])
@pytest.mark.parametrize(
    "metric_class, name", FM.FACILITY_METRICS, ids=[n for _, n in FM.FACILITY_METRICS]
)
def test_split_gives_hand_computed_values(metric_class, name, channel) -> None:
    got = _compute(metric_class(), _split_examples(channel))
    assert _same(got, SPLIT_EXPECTED[name]), (name, got)


@pytest.mark.parametrize(
    "metric_class, name", FM.FACILITY_METRICS, ids=[n for _, n in FM.FACILITY_METRICS]
)
def test_merged_halves_equal_one_pass(metric_class, name) -> None:
    (computation,) = metric_class().computations(example_weighted=True)
    combiner = pickle.loads(pickle.dumps(computation.combiner))  # Beam pickles combiners
    examples = _split_examples()
    first = _accumulate(computation, examples[:1])
    second = _accumulate(computation, examples[1:])
    empty = combiner.create_accumulator()
    merged = combiner.merge_accumulators([first, empty, pickle.loads(pickle.dumps(second))])
    one_pass = _value(computation, _accumulate(computation, examples))
    assert _same(_value(computation, merged), one_pass)
    assert _same(one_pass, SPLIT_EXPECTED[name])
    # Merging leaves its inputs alone (TFMA's jackknife reuses accumulators).
    fresh_first = _value(computation, _accumulate(computation, examples[:1]))
    assert _same(_value(computation, first), fresh_first)


# --- Configs and TFMA -----------------------------------------------------------------------


def test_configs_name_every_metric_and_round_trip() -> None:
    configs = FM.tfma_metric_configs(min_area_ha=0.3, min_overlap=0.2)
    names = [json.loads(c.config)["name"] for c in configs]
    assert names == [name for _, name in FM.FACILITY_METRICS]
    assert len(set(names)) == len(names)
    for config, (metric_class, name) in zip(configs, FM.FACILITY_METRICS, strict=True):
        assert config.module == FM.MODULE == "components.facility_metrics"
        metric = metric_specs.metric_instance(config)
        assert type(metric) is metric_class and metric.name == name
        assert metric.get_config() == json.loads(config.config)
        if metric_class in (FM.FacilityRecall, FM.FacilityPrecision):
            assert metric.get_config()["min_area_ha"] == 0.3
            assert metric.get_config()["min_overlap"] == 0.2
        assert metric.get_config()["threshold"] == THRESHOLD


def test_config_parameters_reach_the_computation() -> None:
    label = _tile([(0, 7, 0, 7), (20, 28, 20, 28)])  # 0.49 ha found, 0.64 ha missed
    example = [_example(label, _predict([(0, 7, 0, 7)]))]
    recall = {
        min_area: _compute(
            metric_specs.metric_instance(FM.tfma_metric_configs(min_area)[0]), example
        )
        for min_area in (0.5, 0.49)
    }
    assert recall == {0.5: 0.0, 0.49: 0.5}


@pytest.mark.parametrize(
    "metric_class, kwargs, message",
    [
        (FM.FacilityRecall, {"min_area_ha": -1.0}, "min_area_ha"),
        (FM.FacilityRecall, {"min_overlap": 0.0}, "min_overlap"),
        (FM.FacilityPrecision, {"min_overlap": 1.5}, "min_overlap"),
        (FM.FacilityPrecision, {"threshold": 1.0}, "threshold"),
        (FM.MedianAreaErrorHa, {"threshold": "0.5"}, "threshold"),
        (FM.LabelledShare, {"name": ""}, "name"),
        (FM.WrongPixels, {"threshold": math.nan}, "threshold"),
    ],
)
def test_bad_parameters_are_rejected(metric_class, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        metric_class(**kwargs)


def test_tfma_computations_in_a_beam_pipeline_give_the_reference_numbers() -> None:
    """EvalConfig -> TFMA's to_computations -> preprocess + CombineGlobally on the DirectRunner."""
    eval_config = config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(label_key="mask_xf", example_weight_key="weight")],
        metrics_specs=[config_pb2.MetricsSpec(metrics=FM.tfma_metric_configs())],
    )
    computations = metric_specs.to_computations(eval_config.metrics_specs, eval_config=eval_config)
    assert sorted(k.name for c in computations for k in c.keys) == sorted(SPLIT_EXPECTED)
    assert all(k.example_weighted for c in computations for k in c.keys)

    def check(expected: dict[str, float]) -> Callable[[list], None]:
        def _check(got: list) -> None:
            try:
                assert len(got) == 1
                ((key, value),) = got[0].items()
                assert _same(value, expected[key.name]), (key.name, value)
            except AssertionError as error:
                raise beam_testing.BeamAssertException(error) from error

        return _check

    with beam.Pipeline() as pipeline:
        examples = pipeline | "Create" >> beam.Create(_split_examples())
        for computation in computations:
            (key,) = computation.keys
            result = (
                examples
                | f"Preprocess {key.name}" >> beam.FlatMap(_metric_inputs, computations)
                | f"Combine {key.name}" >> beam.CombineGlobally(computation.combiner)
            )
            beam_testing.assert_that(result, check(SPLIT_EXPECTED), label=f"Check {key.name}")
