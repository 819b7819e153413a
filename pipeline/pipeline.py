"""The TFX pipeline: GeoTIFF pairs -> validated data -> Transform -> U-Net -> TFMA -> Pusher.

Every step is a TFX component under its TFX name; the three that TFX does not ship as needed
(GeoTiffExampleGen, ExampleValidationGate, the atomic Pusher) live in `components/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants as tfma_constants
from tfx import v1 as tfx

import components
from components import facility_metrics, metrics, scene_predictor_lib, transform_lib
from components.config import TUNE_KEY
from components.example_gen import GeoTiffExampleGen
from components.pusher import Pusher
from components.scene_predictor import ScenePredictor
from components.tuner import Tuner
from components.validation_gate import ExampleValidationGate
from pipeline import nodes
from pipeline.beam_args import direct_args
from pipeline.config import PIPELINE_NAME, PipelineConfig
from pipeline.evaluation import metric_name
from schemas import SCHEMA_DIR, features

COMPONENTS_DIR = Path(components.__file__).resolve().parent
TRANSFORM_MODULE = str(COMPONENTS_DIR / "transform_module.py")
TRAINER_MODULE = str(COMPONENTS_DIR / "trainer_module.py")
TUNER_MODULE = str(COMPONENTS_DIR / "tuner_module.py")
# The same functions by import path, for a compiled pipeline: its container image has the
# project installed (Dockerfile), so nothing is packaged into a wheel under the pipeline root.
PREPROCESSING_FN = "components.transform_module.preprocessing_fn"
RUN_FN = "components.trainer_module.run_fn"
TUNER_FN = "components.tuner_module.tuner_fn"
SCHEMA_FILE = str(SCHEMA_DIR / "schema.pbtxt")


def eval_config(cfg: PipelineConfig, gate: bool = True, blended: bool = False) -> tfma.EvalConfig:
    """TFMA for one split: pixel and facility metrics overall and per example (TFMA slicing on
    the pair id), with bootstrap confidence intervals; with `gate`, the blessing thresholds
    and the no-regression check against the latest blessed model, on the overall slice only.

    `blended`: the ScenePredictor's examples (`components.scene_predictor_lib`), which hold
    each window's label and the blended predictions of the candidate and of the latest blessed
    model; TFMA reads them model-agnostically (`materialized_prediction` model specs naming
    their `prediction_key`), without running a model. Otherwise TFMA runs the model on each
    example: the label is then the transformed mask the Trainer learned (`TrainConfig.labels`:
    the site label by default, `site_mask_xf`); TFMA cannot read a mask stored as raw bytes, so
    it calls the model's `transform_features` signature first and takes the label from there.
    Scene windows hold their site's union in both masks. Slices: overall, by site (TFMA's
    intervals per place) and by example (tile or window).
    """
    t = cfg.thresholds
    bounds = t.lower_bounds() if gate else {}
    drops = dict(t.max_drop) if gate else {}
    configs = metrics.tfma_metric_configs() + facility_metrics.tfma_metric_configs(
        min_area_ha=t.facility_min_area_ha, min_overlap=t.facility_min_overlap
    )
    known = {metric_name(c) for c in configs}
    unknown = sorted((set(bounds) | set(drops)) - known)
    if unknown:
        raise ValueError(f"thresholds name unknown metrics {unknown}; known: {sorted(known)}")
    for config in configs:
        name = metric_name(config)
        if name not in bounds and name not in drops:
            continue
        threshold = tfma.MetricThreshold()
        if name in bounds:
            threshold.value_threshold.lower_bound.value = bounds[name]
        if name in drops:
            threshold.change_threshold.CopyFrom(
                tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -drops[name]},
                )
            )
        # On the split as a whole, not on each tile's slice.
        config.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
    if blended:
        # Named: TFX keeps the baseline's spec when the resolver found a blessed model and
        # drops it (and the change thresholds) on a first run.
        model_specs = [
            tfma.ModelSpec(
                name=tfma.CANDIDATE_KEY,
                model_type=tfma_constants.MATERIALIZED_PREDICTION,
                prediction_key=scene_predictor_lib.PREDICTION,
                label_key=scene_predictor_lib.LABEL,
            ),
            tfma.ModelSpec(
                name=tfma.BASELINE_KEY,
                is_baseline=True,
                model_type=tfma_constants.MATERIALIZED_PREDICTION,
                prediction_key=scene_predictor_lib.BASELINE_PREDICTION,
                label_key=scene_predictor_lib.LABEL,
            ),
        ]
        if not gate:
            del model_specs[1:]
            model_specs[0].name = ""
    else:
        model_specs = [
            tfma.ModelSpec(
                # Named, TFMA would otherwise load the SavedModel as a Keras model once just to
                # find its type, and again in each worker; its signatures are all it calls.
                model_type=tfma_constants.TF_GENERIC,
                signature_name="serving_default",
                preprocessing_function_names=["transform_features"],
                label_key=transform_lib.label_key(cfg.trainer().train.labels),
            )
        ]
    return tfma.EvalConfig(
        model_specs=model_specs,
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[features.SITE_ID]),
            tfma.SlicingSpec(feature_keys=[features.PAIR_ID]),
        ],
        metrics_specs=[tfma.MetricsSpec(metrics=configs)],
        options=tfma.Options(
            # Not the model's compiled metrics: TFMA would load the SavedModel again in every
            # combiner, once per bootstrap sample (290 s instead of 15 s for 20 samples on a
            # tiny model); every metric we report is configured here.
            include_default_metrics={"value": False},
            compute_confidence_intervals={"value": True},
            confidence_intervals=tfma.ConfidenceIntervalOptions(
                method=tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP
            ),
        ),
    )


def create_pipeline(cfg: PipelineConfig) -> tfx.dsl.Pipeline:
    """The pipeline `tailings run` runs locally and `tailings compile` compiles (then
    `cfg.remote` names its URIs and the module functions come from the image)."""
    remote = cfg.remote
    # Local runs name the module files: TFX packages them and hashes their text into the cache
    # key, so an edited module re-runs Transform / the Trainer.
    modules = (
        {
            "transform": {"module_file": TRANSFORM_MODULE},
            "trainer": {"module_file": TRAINER_MODULE},
            "tuner": {"module_file": TUNER_MODULE},
        }
        if remote is None
        else {
            "transform": {"preprocessing_fn": PREPROCESSING_FN},
            "trainer": {"run_fn": RUN_FN},
            "tuner": {"tuner_fn": TUNER_FN},
        }
    )
    example_gen = GeoTiffExampleGen(
        input_base=remote.data if remote else str(cfg.data_dir),
        config=cfg.split,
        tile_size=cfg.transform.tile_size,
        offline=remote is not None,  # compiled for a cloud: the bucket may be out of reach
    ).with_id(nodes.EXAMPLE_GEN)
    schema_file = (
        f"{remote.image_project_dir}/{Path(SCHEMA_FILE).relative_to(SCHEMA_DIR.parent)}"
        if remote
        else SCHEMA_FILE
    )
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_file).with_id(nodes.SCHEMA_GEN)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs[nodes.EXAMPLES], schema=schema_gen.outputs["schema"]
    ).with_id(nodes.STATISTICS_GEN)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs[nodes.STATISTICS], schema=schema_gen.outputs["schema"]
    ).with_id(nodes.EXAMPLE_VALIDATOR)
    gate = ExampleValidationGate(anomalies=example_validator.outputs[nodes.ANOMALIES]).with_id(
        nodes.VALIDATION_GATE
    )
    # The scene split is only evaluated: Transform fits on train and writes train and eval.
    transform = tfx.components.Transform(
        examples=example_gen.outputs[nodes.EXAMPLES],
        schema=schema_gen.outputs["schema"],
        **modules["transform"],
        custom_config=cfg.transform.to_custom_config(),
        splits_config=tfx.proto.SplitsConfig(
            analyze=[nodes.TRAIN_SPLIT], transform=[nodes.TRAIN_SPLIT, nodes.EVAL_SPLIT]
        ),
    ).with_id(nodes.TRANSFORM)
    transform.add_upstream_node(gate)  # anomalies stop the run before Transform and Trainer
    tuner = None
    if cfg.tune is not None:
        # Trials train on the train split's tiles as they are (not Transform's output): each
        # trial normalises with its own training part, holds out one fold and scores scene
        # windows of it (components/tuner_lib.py). eval_args names the train split too: no
        # trial reads the centred eval tiles.
        tuner = Tuner(
            **modules["tuner"],
            examples=example_gen.outputs[nodes.EXAMPLES],
            schema=schema_gen.outputs["schema"],
            train_args=tfx.proto.TrainArgs(splits=[nodes.TRAIN_SPLIT]),
            eval_args=tfx.proto.EvalArgs(splits=[nodes.TRAIN_SPLIT]),
            tune_args=tfx.proto.TuneArgs(num_parallel_trials=cfg.tune.workers),
            custom_config={
                **cfg.trainer().to_custom_config(),
                TUNE_KEY: cfg.tune.to_dict(),
            },
        ).with_id(nodes.TUNER)
        tuner.add_upstream_node(gate)  # no search on data with anomalies
    trainer = tfx.components.Trainer(
        **modules["trainer"],
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        hyperparameters=tuner.outputs[nodes.BEST_HYPERPARAMETERS] if tuner else None,
        custom_config=cfg.trainer().to_custom_config(),
    ).with_id(nodes.TRAINER)
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(nodes.BASELINE_RESOLVER)
    # The scene split is scored as users get it: each eval site predicted whole and blended
    # (`tailings predict`'s code path), by the candidate and by the latest blessed model; the
    # Evaluator reads those predictions (no model run in TFMA) and blesses on them.
    scene_predictor = ScenePredictor(
        examples=example_gen.outputs[nodes.EXAMPLES],
        model=trainer.outputs[nodes.MODEL],
        baseline_model=baseline.outputs["model"],
        split=nodes.SCENE_SPLIT,
        overlap=cfg.scene_overlap,
    ).with_id(nodes.SCENE_PREDICTOR)
    evaluator = tfx.components.Evaluator(
        examples=scene_predictor.outputs[nodes.PREDICTIONS],
        schema=scene_predictor.outputs[nodes.PREDICTION_SCHEMA],
        model=trainer.outputs[nodes.MODEL],
        baseline_model=baseline.outputs["model"],
        example_splits=[nodes.SCENE_SPLIT],
        eval_config=eval_config(cfg, blended=True),
    ).with_id(nodes.SCENE_EVALUATOR)
    tile_evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs[nodes.EXAMPLES],
        model=trainer.outputs[nodes.MODEL],
        example_splits=[nodes.EVAL_SPLIT],
        eval_config=eval_config(cfg, gate=False),
    ).with_id(nodes.TILE_EVALUATOR)
    pusher = Pusher(
        model=trainer.outputs[nodes.MODEL],
        model_blessing=evaluator.outputs[nodes.BLESSING],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=(
                    f"{remote.serving.rstrip('/')}/{cfg.model_name}"
                    if remote
                    else os.path.abspath(cfg.push_dir)
                )
            )
        ),
    ).with_id(nodes.PUSHER)
    # Every Beam-powered component (ExampleGen, StatisticsGen, Transform, both Evaluators)
    # gets these; the DirectRunner settings of `--workers` first, unless the user's set them.
    beam_args = [] if remote else direct_args(cfg.workers, cfg.beam_args)
    beam_args += list(cfg.beam_args)
    return tfx.dsl.Pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=remote.pipeline_root if remote else str(cfg.pipeline_root.resolve()),
        components=[
            example_gen,
            schema_gen,
            statistics_gen,
            example_validator,
            gate,
            transform,
            *([tuner] if tuner else []),
            trainer,
            baseline,
            scene_predictor,
            evaluator,
            tile_evaluator,
            pusher,
        ],
        enable_cache=True,
        metadata_connection_config=None
        if remote
        else tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(cfg.metadata_path.resolve())
        ),
        beam_pipeline_args=beam_args,
    )
