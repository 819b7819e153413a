"""ScenePredictor: the TFX component that predicts each eval site as `tailings predict` predicts
a scene and writes examples holding the blended predictions, with their schema, for the scene
Evaluator to score model-agnostically (the logic and its reasons: `components.scene_predictor_lib`).
"""

# No `from __future__ import annotations`: TFX's decorator reads the annotations as types.
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from components.blending import DEFAULT_OVERLAP
from components.scene_predictor_lib import BASELINE_PREDICTION, BATCH_SIZE, PREDICTION

PREDICTIONS_KEY = "predictions"  # output keys (pipeline.nodes names them for readers)
SCHEMA_KEY = "schema"


@component
def ScenePredictor(  # noqa: N802 - TFX names components like classes
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    predictions: OutputArtifact[standard_artifacts.Examples],
    schema: OutputArtifact[standard_artifacts.Schema],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,  # None: optional input
    split: Parameter[str] = "scene",
    overlap: Parameter[int] = DEFAULT_OVERLAP,
    batch_size: Parameter[int] = BATCH_SIZE,
) -> None:
    """Predict the `split` split's sites with the model (and the baseline, the latest blessed
    model, when there is one) as `tailings predict` does; write examples holding the blended
    predictions, and their schema."""
    import tensorflow as tf
    from absl import logging
    from tfx.utils import io_utils, path_utils

    from components.scene_predictor_lib import predict_split

    pattern = io_utils.all_files_pattern(artifact_utils.get_split_uri([examples], split))
    model_dirs = {PREDICTION: path_utils.serving_model_path(model.uri)}
    if baseline_model is not None:
        model_dirs[BASELINE_PREDICTION] = path_utils.serving_model_path(baseline_model.uri)
    sites, windows = predict_split(
        tf.io.gfile.glob(pattern),
        model_dirs,
        os.path.join(predictions.uri, f"Split-{split}"),
        schema.uri,
        overlap=overlap,
        batch_size=batch_size,
        say=lambda m: logging.info("ScenePredictor: %s", m),
    )
    predictions.split_names = artifact_utils.encode_split_names([split])
    logging.info("ScenePredictor: %d sites, %d windows of the %s split", sites, windows, split)
