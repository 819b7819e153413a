"""Read an Evaluator's TFMA output back: overall metrics with intervals, per-tile rows, gates.

Both Evaluators (scene split, centred eval tiles) write TFMA's standard output; the run
summary and `tailings report` read it through `load_evaluation`, as does `tailings runs` for a
run recorded without its summary (`pipeline.runs`).

Importing this module costs nothing heavy: its types (`Estimate`, `Gate`) are what
`tailings runs` shows from the summary a run recorded in ML Metadata, without TensorFlow. TFMA,
and the metric modules that name the metrics beside TensorFlow and TFMA, load inside
`load_evaluation`, which reads TFMA's files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from pipeline.nodes import IOU
from schemas import features

# Kinds of gate: a lower bound on the value, or a largest drop against the last blessed model.
VALUE_GATE = ">="
DROP_GATE = "drop <="

# TFMA's bootstrap interval is value +- t * standard error, which can pass a metric's range
# (an AUC of 1.03 on a few examples); shown clipped to it.
UNIT_RANGE = (0.0, 1.0)
NON_NEGATIVE = (0.0, math.inf)
Ranges = dict[str, tuple[float, float]]


def _ranges() -> Ranges:
    """The metrics whose range is not [0, 1]. Their names come from the metric modules, which
    import TensorFlow and TFMA: read here, when an evaluation is loaded (with TFMA anyway)."""
    from components.facility_metrics import MEDIAN_AREA_ERROR_HA, VALID_PIXELS, WRONG_PIXELS
    from components.metrics import ACCURACY_GAIN

    return {
        MEDIAN_AREA_ERROR_HA: NON_NEGATIVE,
        VALID_PIXELS: NON_NEGATIVE,
        WRONG_PIXELS: NON_NEGATIVE,
        "example_count": NON_NEGATIVE,  # TFMA's ExampleCount
        ACCURACY_GAIN: (-1.0, 1.0),
    }


def _clipped(name: str, bound: float | None, ranges: Ranges) -> float | None:
    if bound is None:
        return None
    low, high = ranges.get(name, UNIT_RANGE)
    return min(max(bound, low), high)


@dataclass(frozen=True)
class Estimate:
    """A metric's value and its bootstrap 95 % interval (None when TFMA gave none), the
    interval clipped to the metric's range."""

    value: float
    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:.4f}"
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class TileRow:
    """One example's slice: a tile of the eval split, or a window of the scene split."""

    pair_id: str
    labelled_share: float
    predicted_share: float
    iou: float
    wrong_share: float  # share of the split's wrong pixels that lie in this tile


@dataclass(frozen=True)
class Gate:
    """One threshold the Evaluator applied on the whole split, and whether the model met it."""

    metric: str
    kind: str  # VALUE_GATE or DROP_GATE
    bound: float
    value: float | None
    passed: bool


@dataclass
class SplitEvaluation:
    split: str
    metrics: dict[str, Estimate] = field(default_factory=dict)
    tiles: list[TileRow] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    changes: dict[str, float] = field(default_factory=dict)  # candidate - last blessed model
    # TFMA's slices by site (`data.sites`): site id -> metric -> value with its interval.
    sites: dict[str, dict[str, Estimate]] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        return {name: e.value for name, e in self.metrics.items()}

    def lower_bounds(self) -> dict[str, float]:
        return {g.metric: g.bound for g in self.gates if g.kind == VALUE_GATE}

    def shown(self, gate: Gate) -> str:
        """A gate's value as the summary and the report print it: the metric with its
        interval, or the signed change against the last blessed model."""
        if gate.value is None:
            return "-"
        if gate.kind == DROP_GATE:
            return f"{gate.value:+.4f}"
        return str(self.metrics.get(gate.metric, Estimate(gate.value)))


def _number(value) -> float | None:
    if value.HasField("double_value"):
        return value.double_value.value
    return None


def _slice_id(slice_key, column: str = features.PAIR_ID) -> str | None:
    """The pair id (or another column's value) of a slice; None for another slice."""
    for single in slice_key.single_slice_keys:
        if single.column == column:
            kind = single.WhichOneof("kind")
            raw = getattr(single, kind)
            return raw.decode() if isinstance(raw, bytes) else str(raw)
    return None


def _estimate(kv, ranges: Ranges) -> Estimate:
    """A metric's value and its interval, clipped to the metric's range; no interval where
    the bootstrap gave none or NaN (a slice too small for some samples)."""
    low = high = None
    if kv.HasField("confidence_interval"):
        low = _number(kv.confidence_interval.lower_bound)
        high = _number(kv.confidence_interval.upper_bound)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        low = high = None
    name = kv.key.name
    return Estimate(_number(kv.value), _clipped(name, low, ranges), _clipped(name, high, ranges))


def load_evaluation(uri: str, split: str) -> SplitEvaluation:
    """Metrics (candidate model, not the diff against the baseline), tiles and gates."""
    import tensorflow_model_analysis as tfma

    from components.facility_metrics import LABELLED_SHARE, PREDICTED_SHARE, WRONG_PIXELS

    ranges = _ranges()
    result = SplitEvaluation(split=split)
    per_tile: dict[str, dict[str, float]] = {}
    for sliced in tfma.load_metrics(uri):
        pair_id = _slice_id(sliced.slice_key)
        site_id = _slice_id(sliced.slice_key, features.SITE_ID)
        if site_id is not None and pair_id is None:
            result.sites[site_id] = {
                kv.key.name: _estimate(kv, ranges)
                for kv in sliced.metric_keys_and_values
                if kv.key.model_name in ("", "candidate")
                and not kv.key.is_diff
                and _number(kv.value) is not None
            }
            continue
        if sliced.slice_key.single_slice_keys and pair_id is None:
            continue
        for kv in sliced.metric_keys_and_values:
            key = kv.key
            value = _number(kv.value)
            if key.model_name not in ("", "candidate") or value is None:
                continue
            if key.is_diff:
                if pair_id is None:
                    result.changes[key.name] = value
                continue
            if pair_id is not None:
                per_tile.setdefault(pair_id, {})[key.name] = value
                continue
            result.metrics[key.name] = _estimate(kv, ranges)
    total_wrong = result.metrics.get(WRONG_PIXELS, Estimate(0.0)).value
    result.tiles = sorted(
        (
            TileRow(
                pair_id=pid,
                labelled_share=m.get(LABELLED_SHARE, math.nan),
                predicted_share=m.get(PREDICTED_SHARE, math.nan),
                iou=m.get(IOU, math.nan),
                wrong_share=m.get(WRONG_PIXELS, 0.0) / total_wrong if total_wrong else 0.0,
            )
            for pid, m in per_tile.items()
        ),
        key=lambda row: (-row.wrong_share, row.pair_id),
    )
    result.gates, result.failures = _gates(uri, result)
    return result


def _gates(uri: str, result: SplitEvaluation) -> tuple[list[Gate], list[str]]:
    """Thresholds from the EvalConfig TFMA stored with the evaluation (what that run applied,
    not today's defaults), each with the run's value, and TFMA's own failure messages."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config = eval_config_writer.load_eval_run(uri)[0]
    validation = tfma.load_validation_result(uri)
    failed: dict[tuple[str, bool], float] = {}
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            key = failure.metric_key
            value = failure.metric_value.double_value.value
            failed[(key.name, key.is_diff)] = value
            what = f"{key.name} change vs. last blessed model" if key.is_diff else key.name
            failures.append(f"{what} = {value:+.4f}" if key.is_diff else f"{what} = {value:.4f}")
    gates = []
    for spec in eval_config.metrics_specs if eval_config is not None else ():
        for config in spec.metrics:
            name = metric_name(config)
            thresholds = [t.threshold for t in config.per_slice_thresholds]
            if config.HasField("threshold"):
                thresholds.append(config.threshold)
            for threshold in thresholds:
                if threshold.HasField("value_threshold"):
                    bound = threshold.value_threshold.lower_bound.value
                    value = result.metrics[name].value if name in result.metrics else None
                    passed = (name, False) not in failed
                    gates.append(Gate(name, VALUE_GATE, bound, value, passed))
                if threshold.HasField("change_threshold"):
                    drop = -threshold.change_threshold.absolute.value
                    change = result.changes.get(name, failed.get((name, True)))
                    gates.append(Gate(name, DROP_GATE, drop, change, (name, True) not in failed))
    return gates, failures


def metric_name(config) -> str:
    """The name TFMA reports a metric under: its config's `name`, else the class name."""
    return json.loads(config.config or "{}").get("name", config.class_name)
