"""Every knob of `tailings run`, with its default, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from components.config import (
    DEFAULT_PRESET,
    TrainerConfig,
    TransformConfig,
    preset,
    with_overrides,
)
from data.config import SplitConfig

PIPELINE_NAME = "tailings-seg"


@dataclass(frozen=True)
class Thresholds:
    """What a model must reach on the eval split to be blessed (and so pushed).

    0.93 pixel accuracy is above the ~0.91 that predicting "no tailings" everywhere scores on
    the study's data, and IoU >= 0.5 asks for a usable outline of the tailings themselves.
    """

    min_pixel_accuracy: float = 0.93
    min_iou: float = 0.5
    # No regression against the latest blessed model: allowed drop (TFMA change threshold).
    max_regression: float = 1e-10


@dataclass(frozen=True)
class PipelineConfig:
    data_dir: Path = Path("data/brazil-tailings")
    output_dir: Path = Path("outputs")
    serving_dir: Path = Path("serving/models")
    model_name: str = "tailings"
    preset: str = DEFAULT_PRESET
    epochs: int | None = None  # overrides the preset's
    # `model.FIELD=VALUE` / `train.FIELD=VALUE` changes to the preset (components.config).
    overrides: tuple[str, ...] = ()
    workers: int = 1
    split: SplitConfig = SplitConfig()
    transform: TransformConfig = field(default_factory=TransformConfig)
    thresholds: Thresholds = Thresholds()
    trainer_override: TrainerConfig | None = None  # tests: a tiny network

    @property
    def pipeline_root(self) -> Path:
        return self.output_dir / "pipeline"

    @property
    def metadata_path(self) -> Path:
        return self.output_dir / "metadata.sqlite"

    @property
    def push_dir(self) -> Path:
        return self.serving_dir / self.model_name

    def trainer(self) -> TrainerConfig:
        """The preset with the run's changes; raises ValueError if the tiles cannot pass
        through the network, so `tailings run` refuses it before any component runs (the
        Trainer would find out only after ExampleGen, StatisticsGen and Transform)."""
        import dataclasses

        base = with_overrides(self.trainer_override or preset(self.preset), self.overrides)
        if self.epochs is not None:
            base = dataclasses.replace(
                base, train=dataclasses.replace(base.train, epochs=self.epochs)
            )
        base.check_tile_size(self.transform.tile_size)
        return base
