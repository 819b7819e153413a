"""A run's hyperparameter search (`tailings run --tune`), read back for the summary and the report.

The Tuner (components/tuner.py) writes every trial to `TRIALS_FILE` in its TunerResults
artifact; this module finds that artifact by node id and output key and loads nothing heavy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from components.config import TRIALS_FILE
from pipeline import metadata, nodes

# What a trial's score is, for people (components.tuner_lib.OBJECTIVE and how it is measured).
OBJECTIVE_DESCRIPTION = (
    "tailings IoU on scene windows of a held-out fold of the train split (never the eval or "
    "scene split)"
)
COMPLETED = "COMPLETED"


@dataclass(frozen=True)
class Trial:
    trial: str
    status: str
    score: float | None
    hyperparameters: dict[str, float | int | str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return self.metrics.get("seconds")

    def values_text(self) -> str:
        return ", ".join(
            f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in sorted(self.hyperparameters.items())
        )


@dataclass(frozen=True)
class Search:
    objective: str
    algorithm: str
    workers: int
    seconds: float
    trials: tuple[Trial, ...]

    @property
    def best(self) -> Trial | None:
        """The completed trial with the highest score (KerasTuner's best: the objective is
        maximised); the Trainer trained with its values."""
        done = [t for t in self.trials if t.status == COMPLETED and t.score is not None]
        return max(done, key=lambda t: t.score) if done else None

    @property
    def names(self) -> list[str]:
        """Every hyperparameter any trial set, sorted."""
        return sorted({name for t in self.trials for name in t.hyperparameters})


def read_search(run: metadata.RunRecord) -> Search | None:
    """The run's search, or None when it ran no Tuner (or the Tuner wrote no trials)."""
    artifact = run.artifact(nodes.TUNER, nodes.TUNER_RESULTS)
    if artifact is None:
        return None
    path = os.path.join(artifact.uri, TRIALS_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return Search(
        objective=data["objective"],
        algorithm=data["algorithm"],
        workers=int(data["workers"]),
        seconds=float(data["seconds"]),
        trials=tuple(
            Trial(
                trial=t["trial"],
                status=t["status"],
                score=t["score"],
                hyperparameters=t["hyperparameters"],
                metrics=t.get("metrics", {}),
            )
            for t in data["trials"]
        ),
    )


def search_lines(search: Search) -> list[str]:
    """The search in a few terminal lines: what was scored, the best trial, what failed."""
    done = sum(t.status == COMPLETED for t in search.trials)
    out = [
        f"tuning: {done} of {len(search.trials)} trials completed ({search.algorithm}, "
        f"{search.workers} at once) in {search.seconds:.0f} s; score: {OBJECTIVE_DESCRIPTION}"
    ]
    best = search.best
    if best is not None:
        out.append(f"  best trial {best.trial}: {search.objective} {best.score:.3f}")
        out.append(f"  the Trainer trained with: {best.values_text()}")
    failed = [t.trial for t in search.trials if t.status != COMPLETED]
    if failed:
        out.append(f"  trials that did not complete: {', '.join(failed)} (see the Tuner's logs)")
    return out
