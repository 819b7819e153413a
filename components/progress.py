"""Progress while a component trains: one line per Trainer epoch, one per Tuner trial.

    Trainer epoch 3/40: loss 0.412, val IoU 0.613, 9 s/epoch, ETA 5 min 51 s
    Tuner trial 3/10: scene IoU 0.512, 95 s, ETA 5 min 17 s

Where a line goes (`emit`): while `tailings run` runs, the runner names a file in the
environment (`PROGRESS_FILE_ENV`); each line is appended there, and the runner shows it on the
terminal and writes it to the run's log (`pipeline.runner`). A file, because the Tuner's trials
run in processes of their own (components/tuner.py) and the components' stdout and stderr go
to the log, not to the terminal. Without the variable (a compiled pipeline, a component run by
hand) the line is logged. Either way one plain line per event, in a terminal as in a log.

Light at module level (the runner imports it): Keras loads when a callback is made. The label
review's fold models (`pipeline.label_review`) print their epochs with `epoch_progress` too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

# The file the running components append their progress lines to (set by the runner).
PROGRESS_FILE_ENV = "TAILINGS_PROGRESS_FILE"
# Who a line is from: the components' node ids (pipeline.nodes.TRAINER and .TUNER, which this
# layer cannot import; tests/components/test_progress.py checks they agree).
TRAINER_LABEL = "Trainer"
TUNER_LABEL = "Tuner"

log = logging.getLogger(__name__)


def emit(line: str) -> None:
    """One progress line: to the runner's progress file when there is one, else to logging."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        log.info(line)
        return
    try:
        # One write of one short line in append mode: lines of several processes do not mix.
        with open(path, "a") as f:
            f.write(line.replace("\n", " ") + "\n")
    except OSError:  # the runner's folder went away or filled up: progress is not worth a run
        log.info(line)


def duration(seconds: float) -> str:
    """`7 s`, `5 min 51 s`, `1 h 02 min`."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _seconds(seconds: float) -> str:
    """`9 s`; under a second with one decimal (`0.4 s`): tiny models train that fast."""
    return f"{seconds:.1f} s" if seconds < 0.95 else f"{seconds:.0f} s"


def pace(seconds: list[float]) -> float:
    """Seconds per step: the mean without the first step when there are more (the first
    epoch also traces and compiles the model's functions)."""
    later = seconds[1:] or seconds
    return sum(later) / len(later)


def epoch_line(
    label: str,
    epoch: int,
    epochs: int,
    logs: dict[str, float],
    seconds: list[float],
    metric: str,
    later_seconds: float = 0.0,
) -> str:
    """The line after epoch `epoch` (1-based) of `epochs`, given the epochs' durations so far.
    ETA: the epochs left at `pace` (early stopping may end the training sooner), plus
    `later_seconds` of work after this training (the label review's later folds)."""
    per_epoch = pace(seconds)
    loss = logs.get("loss", float("nan"))
    score = logs.get(f"val_{metric}", float("nan"))
    shown = "IoU" if metric == "iou" else metric
    return (
        f"{label} epoch {epoch}/{epochs}: loss {loss:.3f}, val {shown} {score:.3f}, "
        f"{_seconds(per_epoch)}/epoch, ETA {duration(per_epoch * (epochs - epoch) + later_seconds)}"
    )


def epoch_progress(
    label: str,
    epochs: int,
    say: Callable[[str], None] = emit,
    metric: str = "iou",
    remaining_after: Callable[[float], float] | None = None,
) -> Any:
    """A Keras callback: `epoch_line` after every epoch, and one line if training stops
    before its last epoch (early stopping). `remaining_after(seconds a whole training of
    `epochs` takes at this pace)` adds the work that follows to the ETA."""
    import tf_keras as keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.seconds: list[float] = []
            self.epochs_run = 0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.monotonic() - self._started)
            self.epochs_run = epoch + 1
            later = remaining_after(pace(self.seconds) * epochs) if remaining_after else 0.0
            say(epoch_line(label, epoch + 1, epochs, logs or {}, self.seconds, metric, later))

        def on_train_end(self, logs: dict | None = None) -> None:
            if 0 < self.epochs_run < epochs:
                say(f"{label} stopped early after {self.epochs_run}/{epochs} epochs")

    return EpochProgress()


def trial_line(
    label: str,
    trial: int,
    trials: int,
    score: float,
    seconds: list[float],
    workers: int = 1,
    metric: str = "scene IoU",
) -> str:
    """The line after trial `trial` (1-based, in the order trials started) of `trials`, given
    this process's trial durations so far. ETA: the trials not started yet at this process's
    mean trial time, `workers` at once (trials still running elsewhere are not counted)."""
    per_trial = sum(seconds) / len(seconds)
    eta = per_trial * max(0, trials - trial) / max(1, workers)
    return (
        f"{label} trial {trial}/{trials}: {metric} {score:.3f}, {_seconds(seconds[-1])}, "
        f"ETA {duration(eta)}"
    )
