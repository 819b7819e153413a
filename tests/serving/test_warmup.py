"""Warmup requests: written by the Pusher in TF Serving's format and replayable by both engines."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf

from components import trainer_lib, warmup
from serving.servable import Servable
from tests.fixtures.pipeline import TILE


def test_names_match_the_trainers_signatures():
    # components.warmup keeps its own copies to stay light; they must not drift.
    assert warmup.SERVING_DEFAULT == trainer_lib.SERVING_DEFAULT
    assert warmup.PREDICT_IMAGE == trainer_lib.PREDICT_IMAGE
    assert warmup.EXAMPLES_INPUT == trainer_lib.EXAMPLES_INPUT
    assert warmup.IMAGES_INPUT == trainer_lib.IMAGES_INPUT
    assert warmup.PROBABILITIES == trainer_lib.PROBABILITIES


def test_folder_without_a_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(warmup.WarmupError, match=f"{tmp_path}.*cannot read the SavedModel"):
        warmup.write_warmup(str(tmp_path), "tailings")


@pytest.mark.slow
def test_pushed_model_has_tf_serving_warmup_records(pushed):
    from tensorflow_serving.apis import prediction_log_pb2

    cfg, version_dir = pushed
    path = version_dir / warmup.WARMUP_FILE
    assert path.is_file()
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert 1 <= len(records) <= warmup.MAX_WARMUP_RECORDS
    signatures = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == cfg.model_name
        signatures.add(request.model_spec.signature_name)
        for proto in request.inputs.values():
            array = tf.make_ndarray(proto)
            assert array.shape[0] == 1
    assert signatures == {"serving_default", "predict_image"}
    assert warmup.serving_tile_size(warmup.read_signatures(str(version_dir))) == TILE


@pytest.mark.slow
def test_warmup_replays_through_the_model(pushed, tmp_path):
    _, version_dir = pushed
    servable = Servable.load("tailings", 1, version_dir)
    assert servable.warm_up() == 2
    # Written again into a copy (as the Pusher does into its temporary folder): same records.
    copy = tmp_path / "copy"
    shutil.copytree(version_dir, copy)
    (copy / warmup.WARMUP_FILE).unlink()
    warmup.write_warmup(str(copy), "tailings")
    old = [r.numpy() for r in tf.data.TFRecordDataset(str(version_dir / warmup.WARMUP_FILE))]
    new = [r.numpy() for r in tf.data.TFRecordDataset(str(copy / warmup.WARMUP_FILE))]
    assert old == new
    image = tf.make_ndarray(
        warmup.read_warmup(str(copy))[1].predict_log.request.inputs[warmup.IMAGES_INPUT]
    )
    np.testing.assert_array_equal(image[0], warmup.warmup_image(TILE))
