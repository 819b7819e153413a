"""The Tuner's module code: its search space, its trials (the Trainer's training, scored on scene
windows of a held-out fold) and the hand-over of the best values to the Trainer's config."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from components import cross_validation, tuner_lib
from components.config import (
    TUNE_KEY,
    ModelConfig,
    TrainConfig,
    TrainerConfig,
    TuneConfig,
    preset,
    with_hyperparameters,
)
from schemas import features as F
from tests.components import synthetic

TILE = 32
TINY = TrainerConfig(
    model=ModelConfig(encoder="unet", depth=2, base_width=4),
    train=TrainConfig(epochs=1, batch_size=4, max_figures=0),
)


def _every_value(hp) -> list[dict]:
    """Every combination of the space's extreme values (Floats: min and max)."""
    options = {}
    for p in hp.space:
        config = p.get_config()
        options[p.name] = config.get("values") or [config["min_value"], config["max_value"]]
    return [
        dict(zip(options, combo, strict=True)) for combo in itertools.product(*options.values())
    ]


@pytest.mark.parametrize("base", [preset("cpu"), TINY], ids=["pretrained", "scratch"])
def test_every_point_of_the_space_is_a_valid_trainer_config(base) -> None:
    hp = tuner_lib.search_space(base, TuneConfig())
    names = {p.name for p in hp.space}
    width = tuner_lib.BASE_WIDTH if base.model.encoder == "unet" else tuner_lib.DECODER_WIDTHS
    assert names == {
        tuner_lib.LEARNING_RATE,
        tuner_lib.BATCH_SIZE,
        tuner_lib.LOSS,
        tuner_lib.BAND_JITTER,
        width,
    }
    for values in _every_value(hp):
        config = tuner_lib.trial_config(base, values, epochs=3)
        assert config.train.epochs == 3
        assert config.train.learning_rate == pytest.approx(values[tuner_lib.LEARNING_RATE])
        assert config.model.loss == values[tuner_lib.LOSS]


def test_the_spaces_defaults_are_the_presets_values_where_it_holds_them() -> None:
    hp = tuner_lib.search_space(preset("cpu"), TuneConfig())
    assert tuner_lib.trial_config(preset("cpu"), hp.values, epochs=40) == preset("cpu")
    outside = with_hyperparameters(preset("cpu"), {"values": {tuner_lib.BATCH_SIZE: 16}})
    hp = tuner_lib.search_space(outside, TuneConfig())
    assert hp.values[tuner_lib.BATCH_SIZE] == 2  # not in the space: KerasTuner's lowest


def test_width_choices_scale_the_presets_decoder() -> None:
    hp = tuner_lib.search_space(preset("cpu"), TuneConfig(width_scales=(0.5, 1.0)))
    (widths,) = [p for p in hp.space if p.name == tuner_lib.DECODER_WIDTHS]
    assert widths.values == ["[64, 32, 24, 16]", "[128, 64, 48, 32]"]


def test_best_hyperparameters_reach_the_trainer_config_as_tfx_hands_them_over() -> None:
    hp_config = {  # KerasTuner's HyperParameters.get_config(), as the Trainer's FnArgs has it
        "space": [],
        "values": {
            tuner_lib.LEARNING_RATE: 0.0003,
            tuner_lib.BATCH_SIZE: 8,
            tuner_lib.LOSS: "bce",
            tuner_lib.BAND_JITTER: 0.1,
            tuner_lib.DECODER_WIDTHS: "[64, 32, 24, 16]",
        },
    }
    config = with_hyperparameters(preset("cpu"), json.loads(json.dumps(hp_config)))
    assert config.train.learning_rate == 0.0003
    assert config.train.batch_size == 8
    assert config.model.loss == "bce"
    assert config.train.augment_color == 0.1
    assert config.model.decoder_widths == (64, 32, 24, 16)
    assert config.train.epochs == preset("cpu").train.epochs  # trials' epochs stay with trials


def test_tune_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="--tune-trials"):
        TuneConfig(trials=0)
    with pytest.raises(ValueError, match="losses"):
        TuneConfig(losses=("mse",))


def _write_examples(path, count: int, seed: int) -> list[str]:
    instances = synthetic.make_instances(count, TILE, seed)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for instance in instances:
            writer.write(synthetic.serialize(instance))
    return [i[F.PAIR_ID].decode() for i in instances]


def test_read_pairs_gives_back_the_examples_pixels(tmp_path) -> None:
    ids = _write_examples(tmp_path / "train.gz", 3, seed=1)
    pairs = tuner_lib.read_pairs([str(tmp_path / "*.gz")])
    expected = synthetic.make_instances(3, TILE, 1)
    assert [p.pair_id for p in pairs] == sorted(ids)
    image = np.frombuffer(expected[0][F.IMAGE], F.IMAGE_DTYPE).reshape(TILE, TILE, 3)
    np.testing.assert_array_equal(pairs[0].image, image)
    assert pairs[0].transform == (10.0, 0.0, 500000.0, 0.0, -10.0, 7000000.0)


def test_trials_train_on_the_train_split_less_a_fold_and_score_its_scene_windows(tmp_path) -> None:
    """What each trial trains on and is scored on (the pipeline test runs real trials)."""
    ids = _write_examples(tmp_path / "train.gz", 10, seed=3)
    tune = TuneConfig(trials=2, epochs=1, folds=2)
    fn_args = FnArgs(
        train_files=[str(tmp_path / "*.gz")],
        eval_files=[],
        working_dir=str(tmp_path / "work"),
        custom_config={**TINY.to_custom_config(), TUNE_KEY: tune.to_dict()},
    )
    result = tuner_lib.tuner_fn(fn_args)
    assert result.fit_kwargs["epochs"] == 1
    fit, held_out, scene = result.fit_kwargs["data"].load()
    held = sorted(i for i in ids if cross_validation.fold_of(f"site-{i}", 2) == 0)
    assert held_out.ids == held and sorted(fit.ids) == sorted(set(ids) - set(held))
    # Scene windows: each held-out site merged and cut on a shifted grid, no data off its tiles.
    assert scene.ids == cross_validation.scene_windows(held_out).ids
    assert all(i.startswith("site-") and "_y" in i for i in scene.ids)
    assert scene.masks.shape[1:3] == (TILE, TILE) and (scene.masks == F.MASK_NODATA).any()


def tiny_search(
    directory: Path, max_trials: int, num_initial_points: int
) -> tuple[Any, tuner_lib.SceneWindowTuner]:
    """The Tuner's oracle and tuner over TINY's search space, as `tuner_fn` builds them."""
    import keras_tuner as kt

    oracle = tuner_lib.PresetFirstOracle(
        objective=kt.Objective(tuner_lib.OBJECTIVE, "max"),
        max_trials=max_trials,
        hyperparameters=tuner_lib.search_space(TINY, TuneConfig()),
        num_initial_points=num_initial_points,
        seed=1,
    )
    search = tuner_lib.SceneWindowTuner(oracle=oracle, directory=str(directory), project_name="t")
    return oracle, search


def test_the_first_trial_is_the_presets_own_values_then_the_search_explores(tmp_path) -> None:
    oracle, _ = tiny_search(tmp_path, max_trials=3, num_initial_points=2)
    first = oracle.create_trial("tuner0")
    assert tuner_lib.trial_config(TINY, first.hyperparameters.values, epochs=1) == TINY
    second = oracle.create_trial("tuner1")
    assert second.hyperparameters.values != first.hyperparameters.values


def test_a_worker_that_dies_fails_the_search_with_its_last_log_line(tmp_path) -> None:
    import subprocess
    import sys

    from components import tuner

    logs = {name: str(tmp_path / f"{name}.log") for name in ("chief", "tuner0")}
    script = {"chief": "import time; time.sleep(60)", "tuner0": "print('out of memory'); exit(3)"}
    procs = {}
    for name, code in script.items():
        with open(logs[name], "w") as log:
            procs[name] = subprocess.Popen([sys.executable, "-c", code], stdout=log)
    try:
        with pytest.raises(tuner.TuningError, match=r"tuner0 process exited with code 3: out of"):
            tuner._wait(procs, logs, chief_deadline=5)
    finally:
        procs["chief"].kill()
        procs["chief"].wait()
