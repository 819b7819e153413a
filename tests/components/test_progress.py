"""Progress lines while training (components/progress.py): their format, ETA and where they go."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from components import progress
from pipeline import nodes


def test_an_epoch_line_shows_loss_validation_iou_pace_and_the_trainers_eta():
    # The first epoch also traces the model: the pace is the mean of the later ones (9 s).
    line = progress.epoch_line(
        "Trainer", 3, 40, {"loss": 0.4123, "val_iou": 0.6129}, [20.0, 8.0, 10.0], "iou"
    )
    assert line == "Trainer epoch 3/40: loss 0.412, val IoU 0.613, 9 s/epoch, ETA 5 min 33 s"
    last = progress.epoch_line("Trainer", 40, 40, {"loss": 0.2, "val_iou": 0.7}, [5.0], "iou")
    assert last.endswith("5 s/epoch, ETA 0 s")
    # A metric the epoch did not log shows as nan, not as an error.
    assert "val f1 nan" in progress.epoch_line("T", 1, 2, {"loss": 1.0}, [3.0], "f1")
    # Tiny models train in under a second an epoch: not "0 s/epoch".
    fast = progress.epoch_line("T", 2, 9, {}, [30.0, 0.42], "iou")
    assert fast.endswith("0.4 s/epoch, ETA 3 s")


def test_a_trial_line_shows_its_score_and_the_eta_of_the_trials_not_started():
    line = progress.trial_line("Tuner", 3, 10, 0.51234, [100.0, 90.0, 110.0])
    assert line == "Tuner trial 3/10: scene IoU 0.512, 110 s, ETA 11 min 40 s"  # 7 x 100 s
    # Two workers share the 7 trials left.
    assert progress.trial_line("Tuner", 3, 10, 0.5, [100.0], workers=2).endswith("ETA 5 min 50 s")
    assert progress.trial_line("Tuner", 10, 10, 0.5, [60.0]).endswith("ETA 0 s")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"), (333, "5 min 33 s"), (3720, "1 h 02 min")],
)
def test_durations(seconds, shown):
    assert progress.duration(seconds) == shown


def test_the_labels_are_the_pipelines_node_ids():
    assert (progress.TRAINER_LABEL, progress.TUNER_LABEL) == (nodes.TRAINER, nodes.TUNER)


def test_lines_go_to_the_runners_file_when_it_names_one_else_to_logging(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "run.progress"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(path))
    progress.emit("Trainer epoch 1/2: ...")
    progress.emit("Tuner trial 1/2:\nsplit")
    assert path.read_text() == "Trainer epoch 1/2: ...\nTuner trial 1/2: split\n"
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        progress.emit("Trainer epoch 2/2: ...")
    assert [r.getMessage() for r in caplog.records] == ["Trainer epoch 2/2: ..."]
    assert path.read_text().count("\n") == 2  # nothing more in the file


EPOCH = re.compile(
    r"^Trainer epoch (\d+)/(\d+): loss \d+\.\d{3}, val IoU (\d+\.\d{3}|nan), "
    r"\d+(\.\d)? s/epoch, ETA "
)


def _fit(epochs: int, callbacks: list) -> None:
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((16, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 2).astype("float32")
    model = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(4,))])
    model.compile("sgd", "binary_crossentropy", metrics=[keras.metrics.BinaryIoU(name="iou")])
    model.fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0, callbacks=callbacks)


def test_the_callback_says_one_line_per_epoch_of_a_real_fit():
    said: list[str] = []
    _fit(3, [progress.epoch_progress("Trainer", 3, say=said.append)])
    assert len(said) == 3, said
    matches = [EPOCH.match(line) for line in said]
    assert all(matches), said
    assert [(m[1], m[2]) for m in matches] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(m[3] != "nan" for m in matches)  # the validation IoU is read from Keras' logs
    assert said[-1].endswith("ETA 0 s")


def test_early_stopping_ends_with_one_line_that_says_so():
    import tf_keras as keras

    said: list[str] = []

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1

    _fit(5, [StopAfterTwo(), progress.epoch_progress("Trainer", 5, say=said.append)])
    assert len(said) == 3 and all(EPOCH.match(line) for line in said[:2]), said
    assert said[-1] == "Trainer stopped early after 2/5 epochs"


def test_work_after_the_training_is_added_to_the_eta():
    """The label review's fold models: the ETA includes the folds still to train, given what a
    whole training takes at this pace; the line shows the validation loss."""
    seen: list[float] = []

    def later(whole_training: float) -> float:
        seen.append(whole_training)
        return 3600.0  # an hour of later folds

    said: list[str] = []
    _fit(
        2,
        [
            progress.epoch_progress(
                "fold 1/4", 2, say=said.append, metric="loss", remaining_after=later
            )
        ],
    )
    assert len(said) == 2 and len(seen) == 2 and all(s >= 0 for s in seen), (said, seen)
    assert said[0].startswith("fold 1/4 epoch 1/2: loss ") and ", val loss " in said[0], said
    assert said[-1].endswith("ETA 1 h 00 min"), said  # no epochs left: the later work alone
