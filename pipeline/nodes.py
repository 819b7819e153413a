"""Node ids of the pipeline, the output keys read back from ML Metadata, and the run context's
summary property, in one place.

`pipeline.pipeline` gives the components these ids; the run summary, `tailings runs`, the
reports and the tests read artifacts by them. Plain strings, no TFX: `tailings runs` imports
this module and must not pay for TFX, TensorFlow or Beam (tests/pipeline/test_runs.py checks
the keys against the components that write them).
"""

from __future__ import annotations

from data.config import SceneConfig

# Node ids (component ids in ML Metadata and folder names under the pipeline root).
EXAMPLE_GEN = "ExampleGen"
SCHEMA_GEN = "ImportSchemaGen"
STATISTICS_GEN = "StatisticsGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
VALIDATION_GATE = "ExampleValidationGate"
TRANSFORM = "Transform"
TUNER = "Tuner"  # only in runs with `--tune`
TRAINER = "Trainer"
BASELINE_RESOLVER = "latest_blessed_model_resolver"
# Predicts each eval site whole, as `tailings predict` does (the candidate and the baseline).
SCENE_PREDICTOR = "ScenePredictor"
# Two Evaluators: the scene split (the ScenePredictor's blended predictions) decides the
# blessing; the centred eval tiles are reported.
SCENE_EVALUATOR = "Evaluator"
TILE_EVALUATOR = "TileEvaluator"
PUSHER = "Pusher"

# What a component does, on the terminal when it starts (`pipeline.runner`), for those that run
# for minutes without a progress line of their own: a line about every minute says for how long.
ACTIVITIES = {
    SCENE_EVALUATOR: "TFMA: metrics of the scene split's blended predictions, with bootstrap "
    "intervals, and the gates",
    TILE_EVALUATOR: "TFMA: the model on the eval tiles, metrics with bootstrap intervals",
}

# Output keys.
EXAMPLES = "examples"  # components.example_gen.EXAMPLES_KEY
CONVERSION_REPORT = "conversion_report"  # components.example_gen.REPORT_KEY
STATISTICS = "statistics"
ANOMALIES = "anomalies"
MODEL = "model"
MODEL_RUN = "model_run"
EVALUATION = "evaluation"
BLESSING = "blessing"
PUSHED_MODEL = "pushed_model"
BEST_HYPERPARAMETERS = "best_hyperparameters"
TUNER_RESULTS = "tuner_results"
PREDICTIONS = "predictions"  # components.scene_predictor.PREDICTIONS_KEY
PREDICTION_SCHEMA = "schema"  # components.scene_predictor.SCHEMA_KEY

# What `tailings runs` shows of a run, recorded by the runner when the run ends as one custom
# property of the run's ML Metadata context (JSON, `pipeline.runs.RunDigest`), so that listing
# runs reads ML Metadata alone. A new layout gets a new format number; an unknown number is
# read as no summary (the run's outputs are read instead).
RUN_SUMMARY_PROPERTY = "tailings_summary"
RUN_SUMMARY_FORMAT = 1

# Metric names the Evaluators report, as `tailings runs` shows them (components.metrics and
# components.facility_metrics define them beside TensorFlow and TFMA).
PIXEL_ACCURACY = "pixel_accuracy"
IOU = "iou"
FACILITY_RECALL = "facility_recall"

# Splits: ExampleGen's, and which Evaluator scores which.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
SCENE_SPLIT = SceneConfig.name  # "scene"
EVALUATORS = ((SCENE_EVALUATOR, SCENE_SPLIT), (TILE_EVALUATOR, EVAL_SPLIT))
SPLIT_DESCRIPTIONS = {
    SCENE_SPLIT: "scene split: the eval sites, each merged into one place, predicted whole and "
    "blended as `tailings predict` does, scored in windows off its tiles' grid against the "
    "union of the site's masks; decides the blessing",
    EVAL_SPLIT: "eval split: the eval sites' tiles, each centred on a facility; reported, not "
    "gated",
}
