"""TF Serving warmup requests for a pushed model: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests when it loads a version, before marking it AVAILABLE, so the
first real request does not pay for graph tracing and memory allocation. The file is a TFRecord
of `tensorflow.serving.PredictionLog`, at most 1000 records (TF Serving reads no more). The
embedded server (`serving/`) replays the same file, so both engines warm up alike.

The tile size comes from the SavedModel itself: `serving_default` decodes images with a fixed
shape, which shows in the static shape of its output; `predict_image` is warmed at that size too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from schemas import features

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit (saved_model_warmup_util: kMaxNumRecords)

# Kept here rather than imported from components.trainer_lib, which imports TF Transform and
# Keras: the Pusher and the serving CLI need these names without that import cost.
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGE = "predict_image"
EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"
PROBABILITIES = "probabilities"

# A plausible, not degenerate, input: vegetation-like reflectance per band (B2, B3, B4).
WARMUP_REFLECTANCE = (0.04, 0.07, 0.05)


class WarmupError(ValueError):
    """The model does not have the signatures the warmup requests are written for."""


def read_signatures(model_dir: str) -> dict:
    """The SavedModel's `signature_def` map, read from `saved_model.pb` without loading it."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(model_dir, "saved_model.pb")
    from google.protobuf.message import DecodeError

    saved_model = saved_model_pb2.SavedModel()
    try:
        if "://" in path:  # an object store (gs://...): TensorFlow's file system
            import tensorflow as tf

            try:
                with tf.io.gfile.GFile(path, "rb") as fh:
                    saved_model.ParseFromString(fh.read())
            except tf.errors.OpError as err:
                raise WarmupError(f"{path}: cannot read the SavedModel: {err.message}") from None
        else:
            with open(path, "rb") as fh:
                saved_model.ParseFromString(fh.read())
    except OSError as err:
        raise WarmupError(f"{path}: cannot read the SavedModel: {err.strerror}") from None
    except DecodeError as err:
        raise WarmupError(f"{path}: not a SavedModel ({err})") from None
    if not saved_model.meta_graphs:
        raise WarmupError(f"{path}: the SavedModel has no MetaGraph")
    return dict(saved_model.meta_graphs[0].signature_def)


def serving_tile_size(signatures: dict, where: str = "model") -> int:
    """Side of the square tiles `serving_default` accepts (its output's static shape)."""
    if SERVING_DEFAULT not in signatures:
        raise WarmupError(f"{where}: no {SERVING_DEFAULT!r} signature")
    outputs = signatures[SERVING_DEFAULT].outputs
    if PROBABILITIES not in outputs:
        raise WarmupError(f"{where}: {SERVING_DEFAULT!r} has no {PROBABILITIES!r} output")
    shape = outputs[PROBABILITIES].tensor_shape
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank or len(dims) != 4 or dims[1] <= 0 or dims[1] != dims[2]:
        raise WarmupError(
            f"{where}: {SERVING_DEFAULT!r} output shape {dims} does not fix a square tile size"
        )
    return int(dims[1])


def warmup_image(tile: int) -> np.ndarray:
    """One float32 reflectance tile [tile, tile, 3] in the band order the model expects."""
    band = np.asarray(WARMUP_REFLECTANCE, dtype=np.float32)
    return np.broadcast_to(band, (tile, tile, features.EXPECTED_BANDS)).copy()


def image_example(image: np.ndarray) -> bytes:
    """A serialized tf.Example with only the `image` feature: all `serving_default` needs.

    Same byte layout as the converter writes (schemas.features): little-endian float32 H x W x 3.
    """
    import tensorflow as tf

    data = np.ascontiguousarray(image, dtype=features.IMAGE_DTYPE).tobytes()
    feature = {features.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def warmup_logs(model_name: str, tile: int) -> list:
    """One `PredictionLog` per serving signature, each with a one-tile batch."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    image = warmup_image(tile)
    inputs = {
        SERVING_DEFAULT: (EXAMPLES_INPUT, tf.make_tensor_proto([image_example(image)])),
        PREDICT_IMAGE: (IMAGES_INPUT, tf.make_tensor_proto(image[None])),
    }
    logs = []
    for signature, (name, tensor) in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs[name].CopyFrom(tensor)
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup(model_dir: str, model_name: str) -> str:
    """Write the warmup file into a SavedModel folder; returns its path."""
    import tensorflow as tf

    tile = serving_tile_size(read_signatures(model_dir), where=model_dir)
    logs = warmup_logs(model_name, tile)[:MAX_WARMUP_RECORDS]
    path = os.path.join(model_dir, WARMUP_FILE)
    if "://" in path:
        tf.io.gfile.makedirs(os.path.dirname(path))
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(model_dir: str) -> Sequence:
    """The `PredictionLog`s of a model's warmup file (empty when it has none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(model_dir, WARMUP_FILE)
    if not (tf.io.gfile.exists(path) if "://" in path else os.path.exists(path)):
        return []
    logs = []
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    return logs
