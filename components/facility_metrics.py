"""Facility-level and per-tile metrics for the Evaluator, written as native TFMA metrics.

TFMA ships no connected-region metrics, and Keras metrics only see labels and predictions in
batches (no raw features, so no pixel areas). These are hand-written `tfma.metrics.Metric`s:
each builds one `MetricComputation` whose `beam.CombineFn` analyses every example (tile) with
`analyse_tile` and keeps a few weighted sums (the median: one value per tile).

- `facility_recall`: share of labelled facilities (8-connected tailings regions of at least
  `min_area_ha`) of which at least `min_overlap` of the area is predicted tailings.
- `facility_precision`: the same the other way: share of predicted regions (at least
  `min_area_ha`) of which at least `min_overlap` of the area is labelled tailings.
- `median_area_error_ha`: median over tiles of |predicted - labelled tailings area| in ha.
- `labelled_share`, `predicted_share`: tailings pixels / valid pixels, pooled over tiles.
- `wrong_pixels`, `valid_pixels`: weighted counts, for the per-tile table (TFMA slices by
  pair id) and each tile's share of the split's wrong pixels.

Pixels whose label is `MASK_NODATA` count nowhere: not in any region, area or share. Areas come
from each example's raw `crs_wkt` and `transform` features (rasterio's affine order), which
a `FeaturePreprocessor` passes to the combiner. Every metric has a name of its own (the key
it is reported under and the `name` in its MetricConfig), so thresholds and `metric_name`
work on it like on any other metric.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from components.metrics import THRESHOLD
from data import geo
from schemas import features

MODULE = __name__  # "components.facility_metrics": what tfma.MetricConfig(module=...) needs

# Metric names: the keys in TFMA results and the `name` in each MetricConfig.
FACILITY_RECALL = "facility_recall"
FACILITY_PRECISION = "facility_precision"
MEDIAN_AREA_ERROR_HA = "median_area_error_ha"
LABELLED_SHARE = "labelled_share"
PREDICTED_SHARE = "predicted_share"
WRONG_PIXELS = "wrong_pixels"
VALID_PIXELS = "valid_pixels"

MIN_AREA_HA = 0.5  # smaller regions are neither facilities nor predicted facilities
MIN_OVERLAP = 0.1  # share of a region's area the other side must cover for a match
LABEL_CUTOFF = 0.5  # a label above this (and not MASK_NODATA) is tailings
# Relative slack on the area and overlap comparisons: a region of exactly `min_area_ha`
# must not drop out because its pixel areas summed to one ulp less.
_AREA_RTOL = 1e-9
_CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connected regions
_GEO_FEATURES = (features.CRS_WKT, features.TRANSFORM)
_AREA_CACHE_SIZE = 256


@dataclass(frozen=True)
class TileAnalysis:
    """What every metric here needs from one tile; areas in m^2, counts unweighted."""

    valid_pixels: int
    labelled_pixels: int
    predicted_pixels: int
    wrong_pixels: int
    labelled_m2: float = math.nan  # NaN: the tile was analysed without pixel areas
    predicted_m2: float = math.nan
    labelled_facilities: int = 0  # labelled regions of at least min_area_ha
    found_facilities: int = 0  # ... of which at least min_overlap is predicted
    predicted_regions: int = 0  # predicted regions of at least min_area_ha
    confirmed_regions: int = 0  # ... of which at least min_overlap is labelled

    @property
    def area_error_ha(self) -> float:
        """|predicted - labelled tailings area| in hectares."""
        return abs(self.predicted_m2 - self.labelled_m2) / geo.SQUARE_METRES_PER_HECTARE


def _matched_regions(
    mask: np.ndarray,
    other: np.ndarray,
    pixel_m2: np.ndarray,
    min_area_ha: float,
    min_overlap: float,
) -> tuple[int, int]:
    """(regions of `mask` of at least `min_area_ha`, those at least `min_overlap` in `other`)."""
    regions, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count == 0:
        return 0, 0
    flat = regions.ravel()
    area = np.bincount(flat, weights=pixel_m2.ravel(), minlength=count + 1)[1:]
    overlap = np.bincount(flat, weights=(pixel_m2 * other).ravel(), minlength=count + 1)[1:]
    min_area_m2 = min_area_ha * geo.SQUARE_METRES_PER_HECTARE
    large = area >= min_area_m2 * (1.0 - _AREA_RTOL)
    matched = large & (overlap >= min_overlap * area * (1.0 - _AREA_RTOL))
    return int(large.sum()), int(matched.sum())


def analyse_tile(
    label: np.ndarray,
    prediction: np.ndarray,
    *,
    threshold: float = THRESHOLD,
    pixel_m2: np.ndarray | None = None,
    regions: bool = False,
    min_area_ha: float = MIN_AREA_HA,
    min_overlap: float = MIN_OVERLAP,
) -> TileAnalysis:
    """Pixel counts of one [H,W] tile; with `pixel_m2` ([H,W]) also areas and, if `regions`,
    the facility matching. Pixels labelled MASK_NODATA are left out of everything."""
    valid = label != features.MASK_NODATA
    truth = valid & (label > LABEL_CUTOFF)
    predicted = valid & (prediction > threshold)
    counts = {
        "valid_pixels": int(valid.sum()),
        "labelled_pixels": int(truth.sum()),
        "predicted_pixels": int(predicted.sum()),
        "wrong_pixels": int((truth != predicted).sum()),
    }
    if pixel_m2 is None:
        if regions:
            raise ValueError("region metrics need pixel areas (pixel_m2)")
        return TileAnalysis(**counts)
    areas = {
        "labelled_m2": float(pixel_m2[truth].sum()),
        "predicted_m2": float(pixel_m2[predicted].sum()),
    }
    if not regions:
        return TileAnalysis(**counts, **areas)
    labelled, found = _matched_regions(truth, predicted, pixel_m2, min_area_ha, min_overlap)
    predicted_regions, confirmed = _matched_regions(
        predicted, truth, pixel_m2, min_area_ha, min_overlap
    )
    return TileAnalysis(
        **counts,
        **areas,
        labelled_facilities=labelled,
        found_facilities=found,
        predicted_regions=predicted_regions,
        confirmed_regions=confirmed,
    )


@functools.lru_cache(maxsize=_AREA_CACHE_SIZE)
def _pixel_m2(wkt: str, transform: tuple[float, ...], height: int, width: int) -> np.ndarray:
    """Read-only [H,W] pixel areas in m^2 of one grid (tiles of a scene share few grids)."""
    areas = geo.pixel_areas(Affine(*transform), CRS.from_wkt(wkt), height, width)
    return np.broadcast_to(areas, (height, width))  # a read-only view: safe to share


def _feature(element_features: Mapping[str, Any] | None, name: str) -> np.ndarray:
    """One raw feature of an example, flattened (TFMA may give [n], [1,n] or nested lists)."""
    if element_features is None or name not in element_features:
        raise ValueError(
            f"feature {name!r} is missing from the example: facility metrics need the raw "
            f"features {list(_GEO_FEATURES)} for pixel areas (is it in the schema, and did "
            "the FeaturePreprocessor run?)"
        )
    value = element_features[name]
    if value is None:
        raise ValueError(f"feature {name!r} is empty")
    return np.asarray(value, dtype=object).ravel()


def pixel_m2_from_features(
    element_features: Mapping[str, Any] | None, shape: tuple[int, int]
) -> np.ndarray:
    """[H,W] pixel areas in m^2 from an example's `crs_wkt` and `transform` features."""
    wkt_values = _feature(element_features, features.CRS_WKT)
    transform_values = _feature(element_features, features.TRANSFORM)
    if wkt_values.size != 1:
        raise ValueError(f"feature {features.CRS_WKT!r} needs one value, got {wkt_values.size}")
    if transform_values.size != 6:
        raise ValueError(
            f"feature {features.TRANSFORM!r} needs 6 values (a, b, c, d, e, f), "
            f"got {transform_values.size}"
        )
    wkt = wkt_values[0]
    if isinstance(wkt, bytes):
        wkt = wkt.decode("utf-8")
    transform = tuple(float(v) for v in transform_values)
    return _pixel_m2(str(wkt), transform, int(shape[0]), int(shape[1]))


def _as_tile(values: Any, what: str) -> np.ndarray:
    """[H,W] from [H,W], [H,W,1] or [1,H,W,1]."""
    array = np.asarray(values)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what} must be one tile [H,W] or [H,W,1], got shape {np.shape(values)}")
    return array


# --- Accumulators and combiners --------------------------------------------------------------


class _Sums:
    """Weighted numerator and denominator of a ratio (or a count in `numerator`)."""

    __slots__ = ("numerator", "denominator")

    def __init__(self, numerator: float = 0.0, denominator: float = 0.0) -> None:
        self.numerator = numerator
        self.denominator = denominator


class _Values:
    """One value per example (for a median, which cannot be merged from sums)."""

    __slots__ = ("values",)

    def __init__(self, values: list[float] | None = None) -> None:
        self.values = values if values is not None else []


class _TileCombiner(beam.CombineFn):
    """Base of the combiners: `_analyse` unpacks one example and runs `analyse_tile` on it.

    Holds only the key, the eval config and numbers, so Beam pickles it cheaply; pixel areas
    are cached per grid in the module, not in the combiner.
    """

    needs_areas: ClassVar[bool] = False
    needs_regions: ClassVar[bool] = False

    def __init__(
        self,
        key: metric_types.MetricKey,
        eval_config: config_pb2.EvalConfig | None,
        example_weighted: bool,
        threshold: float,
        min_area_ha: float = MIN_AREA_HA,
        min_overlap: float = MIN_OVERLAP,
    ) -> None:
        self._key = key
        self._eval_config = eval_config
        self._example_weighted = example_weighted
        self._threshold = threshold
        self._min_area_ha = min_area_ha
        self._min_overlap = min_overlap

    def _analyse(
        self, element: metric_types.StandardMetricInputs
    ) -> tuple[TileAnalysis | None, float]:
        """The example's analysis and weight; (None, 0.0) for a weight-0 example."""
        label, prediction, weight = next(
            metric_util.to_label_prediction_example_weight(
                element,
                eval_config=self._eval_config,
                model_name=self._key.model_name,
                output_name=self._key.output_name,
                example_weighted=self._example_weighted,
                flatten=False,
                squeeze=False,
                require_single_example_weight=True,
            )
        )
        weight = float(np.asarray(weight).reshape(-1)[0])
        if not math.isfinite(weight) or weight < 0.0:
            raise ValueError(f"example weight must be finite and >= 0, got {weight}")
        if weight == 0.0:
            return None, 0.0
        label = _as_tile(label, "label")
        prediction = _as_tile(prediction, "prediction")
        if label.shape != prediction.shape:
            raise ValueError(
                f"label {label.shape} and prediction {prediction.shape} differ in shape"
            )
        pixel_m2 = (
            pixel_m2_from_features(element.features, label.shape) if self.needs_areas else None
        )
        analysis = analyse_tile(
            label,
            prediction,
            threshold=self._threshold,
            pixel_m2=pixel_m2,
            regions=self.needs_regions,
            min_area_ha=self._min_area_ha,
            min_overlap=self._min_overlap,
        )
        return analysis, weight


class _SumsCombiner(_TileCombiner):
    """A ratio (or count) of weighted sums over examples."""

    is_ratio: ClassVar[bool] = True

    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        """(numerator, denominator) contributed by one example of weight 1."""
        raise NotImplementedError

    def create_accumulator(self) -> _Sums:
        return _Sums()

    def add_input(self, accumulator: _Sums, element: metric_types.StandardMetricInputs) -> _Sums:
        analysis, weight = self._analyse(element)
        if analysis is not None:
            numerator, denominator = self.terms(analysis)
            accumulator.numerator += weight * numerator
            accumulator.denominator += weight * denominator
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Sums]) -> _Sums:
        merged = _Sums()  # fresh: an input may also feed another merge (TFMA's jackknife)
        for accumulator in accumulators:
            merged.numerator += accumulator.numerator
            merged.denominator += accumulator.denominator
        return merged

    def extract_output(self, accumulator: _Sums) -> dict[metric_types.MetricKey, float]:
        if not self.is_ratio:
            return {self._key: float(accumulator.numerator)}
        if accumulator.denominator == 0.0:
            return {self._key: math.nan}
        return {self._key: accumulator.numerator / accumulator.denominator}


class _FacilityRecallCombiner(_SumsCombiner):
    needs_areas = needs_regions = True

    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.found_facilities, tile.labelled_facilities)


class _FacilityPrecisionCombiner(_SumsCombiner):
    needs_areas = needs_regions = True

    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.confirmed_regions, tile.predicted_regions)


class _LabelledShareCombiner(_SumsCombiner):
    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.labelled_pixels, tile.valid_pixels)


class _PredictedShareCombiner(_SumsCombiner):
    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.predicted_pixels, tile.valid_pixels)


class _WrongPixelsCombiner(_SumsCombiner):
    is_ratio = False

    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.wrong_pixels, 0.0)


class _ValidPixelsCombiner(_SumsCombiner):
    is_ratio = False

    def terms(self, tile: TileAnalysis) -> tuple[float, float]:
        return (tile.valid_pixels, 0.0)


class _MedianAreaErrorCombiner(_TileCombiner):
    """Median of the per-example area errors (weight-0 examples left out, else unweighted)."""

    needs_areas = True

    def create_accumulator(self) -> _Values:
        return _Values()

    def add_input(
        self, accumulator: _Values, element: metric_types.StandardMetricInputs
    ) -> _Values:
        analysis, _ = self._analyse(element)
        if analysis is not None:
            accumulator.values.append(analysis.area_error_ha)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Values]) -> _Values:
        merged = _Values()
        for accumulator in accumulators:
            merged.values.extend(accumulator.values)
        return merged

    def extract_output(self, accumulator: _Values) -> dict[metric_types.MetricKey, float]:
        if not accumulator.values:
            return {self._key: math.nan}
        return {self._key: float(np.median(accumulator.values))}


# --- Metrics ---------------------------------------------------------------------------------


def _checked_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _checked_params(
    name: Any, threshold: Any, min_area_ha: Any = MIN_AREA_HA, min_overlap: Any = MIN_OVERLAP
) -> dict[str, Any]:
    """The validated parameters of a metric, as plain JSON-able values."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    threshold = _checked_number("threshold", threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
    min_area_ha = _checked_number("min_area_ha", min_area_ha)
    if min_area_ha < 0.0:
        raise ValueError(f"min_area_ha must be >= 0, got {min_area_ha}")
    min_overlap = _checked_number("min_overlap", min_overlap)
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    return {
        "name": name,
        "threshold": threshold,
        "min_area_ha": min_area_ha,
        "min_overlap": min_overlap,
    }


def _computations_fn(combiner_class: type[_TileCombiner]) -> Callable[..., Any]:
    """A create_computations_fn for `combiner_class`: one computation per model and output.

    TFMA passes eval_config, model_names, output_names and example_weighted by argument name;
    the metric's own parameters (threshold, ...) arrive as keyword arguments.
    """

    def create_computations(
        name: str,
        eval_config: config_pb2.EvalConfig | None = None,
        model_names: list[str] | None = None,
        output_names: list[str] | None = None,
        example_weighted: bool = False,
        **params: Any,
    ) -> metric_types.MetricComputations:
        preprocessors = (
            [metric_types.FeaturePreprocessor(feature_keys=list(_GEO_FEATURES))]
            if combiner_class.needs_areas
            else None
        )
        computations = []
        for model_name in model_names or [""]:
            for output_name in output_names or [""]:
                key = metric_types.MetricKey(
                    name=name,
                    model_name=model_name,
                    output_name=output_name,
                    example_weighted=example_weighted,
                )
                combiner = combiner_class(key, eval_config, example_weighted, **params)
                computations.append(
                    metric_types.MetricComputation(
                        keys=[key], preprocessors=preprocessors, combiner=combiner
                    )
                )
        return computations

    return create_computations


class FacilityRecall(metric_types.Metric):
    """Weighted share of labelled facilities (>= min_area_ha) found (>= min_overlap predicted)."""

    def __init__(
        self,
        name: str = FACILITY_RECALL,
        threshold: float = THRESHOLD,
        min_area_ha: float = MIN_AREA_HA,
        min_overlap: float = MIN_OVERLAP,
    ) -> None:
        params = _checked_params(name, threshold, min_area_ha, min_overlap)
        super().__init__(_computations_fn(_FacilityRecallCombiner), **params)


class FacilityPrecision(metric_types.Metric):
    """Weighted share of predicted regions (>= min_area_ha) that are >= min_overlap labelled."""

    def __init__(
        self,
        name: str = FACILITY_PRECISION,
        threshold: float = THRESHOLD,
        min_area_ha: float = MIN_AREA_HA,
        min_overlap: float = MIN_OVERLAP,
    ) -> None:
        params = _checked_params(name, threshold, min_area_ha, min_overlap)
        super().__init__(_computations_fn(_FacilityPrecisionCombiner), **params)


class _TileMetric(metric_types.Metric):
    """A metric of `name` and `threshold` only (no regions), computed by `combiner_class`."""

    combiner_class: ClassVar[type[_TileCombiner]]

    def __init__(self, name: str, threshold: float = THRESHOLD) -> None:
        params = _checked_params(name, threshold)
        super().__init__(
            _computations_fn(self.combiner_class),
            name=params["name"],
            threshold=params["threshold"],
        )


class MedianAreaErrorHa(_TileMetric):
    """Median over examples of |predicted - labelled tailings area| in hectares."""

    combiner_class = _MedianAreaErrorCombiner

    def __init__(self, name: str = MEDIAN_AREA_ERROR_HA, threshold: float = THRESHOLD) -> None:
        super().__init__(name=name, threshold=threshold)


class LabelledShare(_TileMetric):
    """Labelled tailings pixels / valid pixels, pooled over examples by weight."""

    combiner_class = _LabelledShareCombiner

    def __init__(self, name: str = LABELLED_SHARE, threshold: float = THRESHOLD) -> None:
        super().__init__(name=name, threshold=threshold)


class PredictedShare(_TileMetric):
    """Predicted tailings pixels / valid pixels, pooled over examples by weight."""

    combiner_class = _PredictedShareCombiner

    def __init__(self, name: str = PREDICTED_SHARE, threshold: float = THRESHOLD) -> None:
        super().__init__(name=name, threshold=threshold)


class WrongPixels(_TileMetric):
    """Weighted count of valid pixels where prediction and label disagree."""

    combiner_class = _WrongPixelsCombiner

    def __init__(self, name: str = WRONG_PIXELS, threshold: float = THRESHOLD) -> None:
        super().__init__(name=name, threshold=threshold)


class ValidPixels(_TileMetric):
    """Weighted count of valid pixels (label not MASK_NODATA)."""

    combiner_class = _ValidPixelsCombiner

    def __init__(self, name: str = VALID_PIXELS, threshold: float = THRESHOLD) -> None:
        super().__init__(name=name, threshold=threshold)


# (class, name) of every metric here, in report order.
FACILITY_METRICS: tuple[tuple[type[metric_types.Metric], str], ...] = (
    (FacilityRecall, FACILITY_RECALL),
    (FacilityPrecision, FACILITY_PRECISION),
    (MedianAreaErrorHa, MEDIAN_AREA_ERROR_HA),
    (LabelledShare, LABELLED_SHARE),
    (PredictedShare, PREDICTED_SHARE),
    (WrongPixels, WRONG_PIXELS),
    (ValidPixels, VALID_PIXELS),
)
_REGION_METRICS = (FacilityRecall, FacilityPrecision)

for _cls, _ in FACILITY_METRICS:
    metric_types.register_metric(_cls)


def tfma_metric_configs(
    min_area_ha: float = MIN_AREA_HA,
    min_overlap: float = MIN_OVERLAP,
    threshold: float = THRESHOLD,
) -> list[config_pb2.MetricConfig]:
    """`tfma.MetricConfig`s of every metric here, each with its name and parameters in the JSON.

    The configs come from the metrics' own `get_config`, so they load back unchanged (and bad
    parameters fail here, not inside the Evaluator).
    """
    configs = []
    for cls, name in FACILITY_METRICS:
        extra = (
            {"min_area_ha": min_area_ha, "min_overlap": min_overlap}
            if cls in _REGION_METRICS
            else {}
        )
        metric = cls(name=name, threshold=threshold, **extra)
        configs.append(
            config_pb2.MetricConfig(
                class_name=cls.__name__,
                module=MODULE,
                config=json.dumps(metric.get_config(), sort_keys=True),
            )
        )
    return configs
