"""`tailings predict SCENE... --out-dir DIR --beam -- <Beam options>`: the fleet on Beam.

For more scenes than one machine predicts in time, the same work as `serving.fleet` as a Beam
pipeline, on any runner (`-- --runner=DataflowRunner ...`, Flink or Spark job servers, or the
DirectRunner's worker processes):

    Create(scenes)
    -> ReadWindows        every window's pixels, keyed (scene, row, column), read with the
                          single-scene code (`serving.predict.read_strips`, `strip_tiles`); a
                          scene whose pixels cannot be read goes to the `failed` output
    -> RunInference       Beam's TensorFlow model handler (`TFModelHandlerNumpy`) in a
                          `KeyedModelHandler`, batching windows across scenes
    -> CoGroupByKey       per scene: its windows' probabilities and its read failure, if any
    -> WriteScene         `serving.predict.write_scene`, the single-scene code: the same
                          blending, thresholds, outputs and hectares as the in-process path
    -> WriteToText        one JSON `FleetRecord` per scene, read back by the CLI into
                          summary.csv / summary.geojson (`serving.fleet.write_summary`)

The model handler is Beam's, with two settings and why. It loads the SavedModel with
`load_model_args={"compile": False}`: Beam's loader is `tf.keras.models.load_model`, and
compiling would revive the Trainer's custom training metrics, which inference never uses.
Its `inference_fn` (`serving_default_inference`) calls the `serving_default` signature with
serialized tf.Examples, as `tailings predict --model` and TF Serving's clients do, so the
pipeline's Transform graph normalises the pixels exactly as in training; the handler's
default would call the Keras model on raw pixels and skip it. Measured on the pushed model:
the Keras-loaded signature and `tf.saved_model.load`'s (`serving.servable`) give bit-identical
probabilities, whatever the batch's size or makeup.

Memory: a scene's window probabilities meet in one worker to be blended (float32, 0.8 MB per
448-pixel window: ~1 GB for a whole 10980 x 10980 Sentinel-2 tile at the default overlap).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

# Registers the Trainer's metric classes with Keras: Beam's handler loads the SavedModel with
# Keras, which revives them (one warning per metric, per worker, if it cannot).
import components.metrics  # noqa: F401
from components.scene_predictor_lib import serving_default_probabilities
from components.warmup import SERVING_DEFAULT
from data.errors import TailingsError
from serving.config import PredictConfig
from serving.fleet import FleetOutputs, FleetPlan, FleetRecord, SceneJob
from serving.predict import (
    Grid,
    PredictError,
    open_scene,
    read_strips,
    strip_tiles,
    write_scene,
)

FAILED_TAG = "failed"
# `--workers` on the DirectRunner: worker processes, each with its own copy of the model.
RUNNING_MODE = "multi_processing"
RECORDS = "records.jsonl"


def serving_default_inference(
    model, batch: Sequence[np.ndarray], inference_args: dict, model_id: str | None = None
) -> list[PredictionResult]:
    """Beam `inference_fn`: tiles [S, S, 3] -> probabilities [S, S] through `serving_default`
    (the call the pipeline's ScenePredictor makes)."""
    probabilities = serving_default_probabilities(
        model.signatures[SERVING_DEFAULT], np.stack(list(batch))
    )
    return [
        PredictionResult(tile, p, model_id) for tile, p in zip(batch, probabilities, strict=True)
    ]


def model_handler(version_dir: Path, cfg: PredictConfig):
    """Beam's TensorFlow model handler for a pushed version, keyed, batching `batch_size`."""
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    return KeyedModelHandler(
        TFModelHandlerNumpy(
            str(version_dir),
            load_model_args={"compile": False},
            inference_fn=serving_default_inference,
            min_batch_size=cfg.batch_size,
            max_batch_size=cfg.batch_size,
        )
    )


class ReadWindows(beam.DoFn):
    """(name, path) -> ((name, row, column), [S, S, 3] float32) for every window of the scene;
    a scene whose pixels cannot be read -> (name, error) on the `failed` output."""

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg

    def process(self, scene: tuple[str, str]):
        name, path = scene
        try:
            src = open_scene(Path(path), self.cfg.mask_clouds, self.cfg.band_baseline)
        except TailingsError as err:
            yield beam.pvalue.TaggedOutput(FAILED_TAG, (name, str(err)))
            return
        try:
            grid = Grid.of(src.height, src.width, self.cfg.tile, self.cfg.overlap)
            for k, _valid, strip, _cloudy in read_strips(src, Path(path), grid):
                tiles = strip_tiles(strip, grid.cols, self.cfg.tile)
                for j, tile in enumerate(tiles):
                    yield (name, k, j), tile
        except TailingsError as err:
            yield beam.pvalue.TaggedOutput(FAILED_TAG, (name, str(err)))
        finally:
            src.close()


def _by_scene(keyed: tuple[tuple[str, int, int], PredictionResult]):
    (name, k, j), result = keyed
    return name, (k, j, np.asarray(result.inference, dtype=np.float32))


class WriteScene(beam.DoFn):
    """A scene's windows -> its outputs (`write_scene`) -> its FleetRecord as JSON."""

    def __init__(self, described: dict[str, str], outputs: FleetOutputs, cfg, model: str):
        self.described, self.outputs, self.cfg, self.model = described, outputs, cfg, model

    def process(self, grouped: tuple[str, dict]):
        name, parts = grouped
        record = FleetRecord.from_json(self.described[name])
        failures = list(parts["failed"])
        if failures:
            yield record.fail(failures[0]).to_json()
            return
        job = SceneJob(Path(record.scene), name)
        windows = {(k, j): p for k, j, p in parts["windows"]}

        def row_probabilities(k: int, cols: Sequence[int], _strip) -> list[np.ndarray]:
            return [windows[(k, j)] for j in range(len(cols))]

        mask, probabilities, polygons = self.outputs.paths(job)
        try:
            result = write_scene(
                job.path, self.model, row_probabilities, mask, self.cfg, probabilities, polygons
            )
        except TailingsError as err:
            record.fail(str(err))
        except KeyError as err:
            record.fail(f"{job.path}: window {err.args[0]} was not predicted")
        else:
            record.succeed(result)
        yield record.to_json()


def predict_fleet_beam(
    plan: FleetPlan,
    version_dir: Path,
    outputs: FleetOutputs,
    cfg: PredictConfig,
    options: PipelineOptions,
    say: Callable[[str], None] = lambda _m: None,
) -> list[FleetRecord]:
    """Run the pipeline over the plan's ready scenes; return every scene's record (the plan's
    failed ones first), in the plan's order."""
    described = {job.name: FleetRecord.described(job, info).to_json() for job, info in plan.ready}
    paths = [(job.name, str(job.path)) for job, _ in plan.ready]
    scratch = Path(tempfile.mkdtemp(prefix=".beam-", dir=outputs.out_dir))
    try:
        say(f"Beam: {len(plan.ready)} scene(s), {plan.windows} windows, model {version_dir}")
        try:
            pipeline = beam.Pipeline(options=options)
        except ValueError as err:
            raise PredictError(f"Beam pipeline options: {err}") from None
        with pipeline as p:
            scenes = p | "Scenes" >> beam.Create(paths)
            read = scenes | "ReadWindows" >> beam.ParDo(ReadWindows(cfg)).with_outputs(
                FAILED_TAG, main="windows"
            )
            predicted = (
                read.windows
                | "RunInference" >> RunInference(model_handler(version_dir, cfg))
                | "ByScene" >> beam.Map(_by_scene)
            )
            keys = scenes | "Keys" >> beam.Map(lambda scene: (scene[0], None))
            (
                {"scene": keys, "windows": predicted, "failed": read[FAILED_TAG]}
                | "Group" >> beam.CoGroupByKey()
                | "WriteScene" >> beam.ParDo(WriteScene(described, outputs, cfg, str(version_dir)))
                | "Records" >> beam.io.WriteToText(str(scratch / RECORDS), shard_name_template="")
            )
        lines = (scratch / RECORDS).read_text(encoding="utf-8").splitlines()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    by_name = {record.name: record for record in map(FleetRecord.from_json, lines)}
    return list(plan.failed) + [by_name[job.name] for job, _ in plan.ready]
