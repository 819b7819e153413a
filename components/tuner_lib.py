"""The Tuner's module code: KerasTuner searches the Trainer's settings, scored on scene windows.

TFX's Tuner calls `tuner_fn(fn_args)` (through components/tuner_module.py) and then
`tuner.search(**fit_kwargs)`; the Trainer receives the best values as `fn_args.hyperparameters`
(`components.config.with_hyperparameters`).

- **What a trial does**: trains the Trainer's own model with the Trainer's own training code
  (`cross_validation.train_and_predict`: `trainer_lib.compile_model`, the mosaic windows and
  augmentation of `batch_pairs`, `fit_callbacks`, `finish_training`) on the train split minus
  one fold, for `TuneConfig.epochs` epochs, and scores the tailings IoU on **scene windows** of
  the held-out fold (its tiles mosaicked and cut on a shifted grid, as ExampleGen builds the
  scene split from the eval pairs), at the preset's decision threshold and test-time
  augmentation. Not the centred eval tiles (they reward marking the middle of a tile), and not
  the pipeline's scene split: that split decides the blessing, and choosing among trials by it
  would make the gate's figures optimistic.
- **Why Bayesian optimisation, not Hyperband**: Hyperband resumes its promising trials from a
  checkpoint at a larger epoch budget and ranks them by their scores after a few epochs. This
  recipe ends a training with steps that do not resume (the averaged weights swapped in, the
  BatchNorm statistics re-estimated for them), and on a few dozen tiles the scores after 2-5
  epochs are noise. Each trial here is one whole short training; a Gaussian process proposes
  the next values after `TuneConfig.random_points` random ones.
- **tf_keras models although keras-tuner 1.4 imports Keras 3** (keras-tuner issue 1039):
  `SceneWindowTuner` is a KerasTuner `BaseTuner`, not a `keras_tuner.Tuner`. BaseTuner leaves
  building and fitting to `run_trial`, which calls the tf_keras code above; KerasTuner only
  proposes values and records scores, so no Keras 3 model, callback or checkpoint is made
  (keras_tuner still imports Keras 3 itself; nothing uses it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import keras_tuner as kt
import numpy as np
from keras_tuner.engine import base_tuner
from tfx.components.tuner.component import TunerFnResult

from components import cross_validation, progress
from components.config import (
    TUNE_KEY,
    TrainerConfig,
    TuneConfig,
    hyperparameter_overrides,
    with_overrides,
)

# The objective and the other metrics each trial records (KerasTuner keeps them per trial;
# components/tuner.py writes them to the TunerResults artifact as TRIALS_FILE).
OBJECTIVE = "scene_iou"
SCENE_F1 = "scene_f1"
SCENE_PIXEL_ACCURACY = "scene_pixel_accuracy"
SECONDS = "seconds"
EPOCHS = "epochs"
PROJECT = "tailings"  # KerasTuner's project folder under the Tuner's working directory

# Hyperparameters by the `--set` path they change (components.config.with_overrides).
LEARNING_RATE = "train.learning_rate"
BATCH_SIZE = "train.batch_size"
LOSS = "model.loss"
BAND_JITTER = "train.augment_color"
DECODER_WIDTHS = "model.decoder_widths"
BASE_WIDTH = "model.base_width"


def search_space(config: TrainerConfig, tune: TuneConfig) -> kt.HyperParameters:
    """The hyperparameters `tune` spans, with the preset `config`'s values as their defaults
    (where the space holds them; else KerasTuner's: the lowest).

    The width knob is the decoder's widths for the ImageNet encoders (their own widths are
    fixed by the weights) and the base width for the scratch U-Net, each as multiples of the
    preset's (`TuneConfig.width_scales`).
    """
    hp = kt.HyperParameters()
    train, model = config.train, config.model

    def default(value: Any, low: Any, high: Any) -> Any:
        return value if low <= value <= high else None

    low, high = tune.learning_rate
    hp.Float(
        LEARNING_RATE, low, high, sampling="log", default=default(train.learning_rate, low, high)
    )
    hp.Choice(
        BATCH_SIZE,
        list(tune.batch_sizes),
        default=train.batch_size if train.batch_size in tune.batch_sizes else None,
    )
    hp.Choice(LOSS, list(tune.losses), default=model.loss if model.loss in tune.losses else None)
    low, high = tune.band_jitter
    on_step = (
        abs(
            round((train.augment_color - low) / tune.band_jitter_step) * tune.band_jitter_step
            + low
            - train.augment_color
        )
        < 1e-9
    )
    hp.Float(
        BAND_JITTER,
        low,
        high,
        step=tune.band_jitter_step,
        default=default(train.augment_color, low, high) if on_step else None,
    )
    if model.encoder == "unet":
        widths = sorted({max(1, round(model.base_width * s)) for s in tune.width_scales})
        hp.Choice(
            BASE_WIDTH, widths, default=model.base_width if model.base_width in widths else None
        )
    else:
        choices = list(
            dict.fromkeys(
                str([max(1, round(w * s)) for w in model.decoder_widths])
                for s in sorted(tune.width_scales)
            )
        )
        preset_widths = str(list(model.decoder_widths))
        hp.Choice(
            DECODER_WIDTHS,
            choices,
            default=preset_widths if preset_widths in choices else None,
        )
    return hp


class PresetFirstOracle(kt.oracles.BayesianOptimizationOracle):
    """KerasTuner's Bayesian optimisation whose first trial is the space's defaults, the
    preset's own values: every search scores the recipe it would replace, under the same
    protocol (fold, epochs, windows), beside the trials that might replace it."""

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if not self.trials:  # KerasTuner registers a trial only after its values are chosen
            return {
                "status": kt.engine.trial.TrialStatus.RUNNING,
                "values": self.hyperparameters.copy().values,
            }
        return super().populate_space(trial_id)


def trial_config(base: TrainerConfig, values: dict[str, Any], epochs: int) -> TrainerConfig:
    """The Trainer's config of one trial: the preset with the trial's values, `epochs` long."""
    return with_overrides(base, [*hyperparameter_overrides(values), f"train.epochs={epochs}"])


@dataclass
class TrialData:
    """The train split's tiles, split into the part trials train on and the held-out fold
    whose scene windows score them. Read on a trial's first use, once per process: the chief
    oracle of a parallel search never runs a trial, so it never reads the pixels."""

    train_files: list[str]
    folds: int
    labels: str = "site"  # TrainConfig.labels: what the trials learn and are scored on
    _loaded: tuple | None = field(default=None, repr=False)

    def load(self) -> tuple[cross_validation.Split, cross_validation.Split, cross_validation.Split]:
        """(tiles to train on, held-out tiles, the held-out tiles' scene windows)."""
        if self._loaded is None:
            pairs = read_pairs(self.train_files)
            held = np.array([cross_validation.fold_of(p.site, self.folds) == 0 for p in pairs])
            if not held.any() or held.all():
                raise ValueError(
                    f"the tuning fold split the {len(pairs)} train pairs into {int(held.sum())} "
                    f"held out and {int((~held).sum())} to train on; both need at least one pair "
                    f"(fewer folds: TuneConfig.folds, now {self.folds})"
                )
            split = cross_validation.stack(pairs, self.labels)
            held_out = cross_validation.subset(split, held)
            self._loaded = (
                cross_validation.subset(split, ~held),
                held_out,
                cross_validation.scene_windows(held_out),
            )
        return self._loaded


def read_pairs(file_patterns: list[str]) -> list:
    """Every example of ExampleGen's shards matching `file_patterns`, as GeoPairs, by id."""
    import tensorflow as tf

    from data.examples import decode_pair

    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no examples match {file_patterns}")
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return sorted((decode_pair(r.numpy()) for r in records), key=lambda p: p.pair_id)


class SceneWindowTuner(base_tuner.BaseTuner):
    """A KerasTuner tuner whose trials run the Trainer's training (see the module docstring)."""

    def run_trial(  # type: ignore[override]
        self,
        trial: Any,
        data: TrialData,
        base: dict[str, Any],
        epochs: int,
        trials: int = 1,
        workers: int = 1,
    ) -> dict[str, float]:
        """One trial: train `epochs` epochs with the trial's values, score the scene windows.
        `trials` and `workers` (the search's, TuneConfig) only feed its progress line."""
        config = trial_config(
            TrainerConfig.from_custom_config(base), trial.hyperparameters.values, epochs
        )
        fit, held_out, scene = data.load()
        started = time.monotonic()
        epoch_lines = progress.epoch_progress(  # a line per epoch in the trial's log
            f"{self.tuner_id} trial {trial.trial_id}",
            epochs,
            say=lambda line: print(line, flush=True),
        )
        result = cross_validation.train_and_predict(
            fit, held_out, config, scene=scene, callbacks=[epoch_lines], predict_held_out=False
        )
        assert result.scene is not None  # asked for above
        scores = cross_validation.pixel_scores(
            result.scene[config.model.test_time_augmentation],
            scene.masks,
            config.model.decision_threshold,
        )
        seconds = time.monotonic() - started
        # A line per trial on the terminal of `tailings run` and in its log, from every process.
        self.trial_seconds = [*getattr(self, "trial_seconds", []), seconds]
        progress.emit(
            progress.trial_line(
                progress.TUNER_LABEL,
                int(trial.trial_id) + 1,
                trials,
                scores["iou"],
                self.trial_seconds,
                workers,
            )
        )
        return {
            OBJECTIVE: scores["iou"],
            SCENE_F1: scores["f1"],
            SCENE_PIXEL_ACCURACY: scores["pixel_accuracy"],
            SECONDS: seconds,
            EPOCHS: float(result.epochs),
        }


def tuner_fn(fn_args: Any) -> TunerFnResult:
    """TFX's entry point: the tuner and what its `search` gets (`fn_args` is TFX's FnArgs;
    its `custom_config` is the Trainer's plus `TUNE_KEY`)."""
    custom_config = dict(fn_args.custom_config or {})
    tune = TuneConfig.from_dict(custom_config.pop(TUNE_KEY, None))
    config = TrainerConfig.from_custom_config(custom_config)
    oracle = PresetFirstOracle(
        objective=kt.Objective(OBJECTIVE, direction="max"),
        max_trials=tune.trials,
        hyperparameters=search_space(config, tune),
        allow_new_entries=False,
        tune_new_entries=False,
        num_initial_points=tune.random_points,
        seed=tune.seed,
    )
    tuner = SceneWindowTuner(oracle=oracle, directory=fn_args.working_dir, project_name=PROJECT)
    return TunerFnResult(
        tuner=tuner,
        fit_kwargs={
            "data": TrialData(list(fn_args.train_files), tune.folds, config.train.labels),
            "base": config.to_custom_config(),
            "epochs": tune.epochs,
            "trials": tune.trials,
            "workers": tune.workers,
        },
    )
