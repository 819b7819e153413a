"""The TFX pipeline: GeoTIFF pairs -> validated data -> Transform -> U-Net -> TFMA -> Pusher.

Every step is a TFX component under its TFX name; the three that TFX does not ship as needed
(GeoTiffExampleGen, ExampleValidationGate, the atomic Pusher) live in `components/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

import components
from components import metrics, transform_lib
from components.example_gen import GeoTiffExampleGen
from components.pusher import Pusher
from components.validation_gate import ExampleValidationGate
from pipeline.config import PIPELINE_NAME, PipelineConfig
from schemas import SCHEMA_DIR

COMPONENTS_DIR = Path(components.__file__).resolve().parent
TRANSFORM_MODULE = str(COMPONENTS_DIR / "transform_module.py")
TRAINER_MODULE = str(COMPONENTS_DIR / "trainer_module.py")
SCHEMA_FILE = str(SCHEMA_DIR / "schema.pbtxt")
EVAL_SPLIT = "eval"
BASELINE_RESOLVER_ID = "latest_blessed_model_resolver"


def eval_config(cfg: PipelineConfig) -> tfma.EvalConfig:
    """TFMA on the eval split: pixel metrics, thresholds, and no regression vs. the baseline.

    The label is the transformed mask: TFMA cannot read a mask stored as raw bytes, so it calls
    the model's `transform_features` signature first and takes `mask_xf` from there.
    """
    t = cfg.thresholds
    bounds = {
        metrics.PIXEL_ACCURACY: t.min_pixel_accuracy,
        metrics.IOU: t.min_iou,
    }
    configs = []
    for config in metrics.tfma_metric_configs():
        name = metric_name(config)
        if name in bounds:
            config.threshold.CopyFrom(
                tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(lower_bound={"value": bounds[name]}),
                    change_threshold=tfma.GenericChangeThreshold(
                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                        absolute={"value": -t.max_regression},
                    ),
                )
            )
        configs.append(config)
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                preprocessing_function_names=["transform_features"],
                label_key=transform_lib.MASK_XF,
            )
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=configs)],
    )


def metric_name(config: tfma.MetricConfig) -> str:
    """The name TFMA reports a metric under: its config's `name`, else the class name."""
    return json.loads(config.config or "{}").get("name", config.class_name)


def create_pipeline(cfg: PipelineConfig) -> tfx.dsl.Pipeline:
    example_gen = GeoTiffExampleGen(input_base=str(cfg.data_dir), config=cfg.split).with_id(
        "ExampleGen"
    )
    schema_gen = tfx.components.ImportSchemaGen(schema_file=SCHEMA_FILE)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"]
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    gate = ExampleValidationGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        module_file=TRANSFORM_MODULE,
        custom_config=cfg.transform.to_custom_config(),
    )
    transform.add_upstream_node(gate)  # anomalies stop the run before Transform and Trainer
    trainer = tfx.components.Trainer(
        module_file=TRAINER_MODULE,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        custom_config=cfg.trainer().to_custom_config(),
    )
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BASELINE_RESOLVER_ID)
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        example_splits=[EVAL_SPLIT],
        eval_config=eval_config(cfg),
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.abspath(cfg.push_dir)
            )
        ),
    )
    beam_args = [f"--direct_num_workers={cfg.workers}"]
    if cfg.workers > 1:
        # Threads, not processes: the heavy work (GDAL, zlib, TF) releases the GIL and worker
        # processes would each pay Beam's and TensorFlow's import time.
        beam_args.append("--direct_running_mode=multi_threading")
    return tfx.dsl.Pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=str(cfg.pipeline_root.resolve()),
        components=[
            example_gen,
            schema_gen,
            statistics_gen,
            example_validator,
            gate,
            transform,
            trainer,
            baseline,
            evaluator,
            pusher,
        ],
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(cfg.metadata_path.resolve())
        ),
        beam_pipeline_args=beam_args,
    )
