"""Every knob of the Transform and Trainer steps, with all defaults in this one module.

The dataclasses are plain JSON-able values so they can travel through TFX `custom_config`
(which is serialised to JSON in the pipeline IR) and be rebuilt inside the module files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Loss = Literal["bce", "bce_dice", "bce_batch_dice"]
LOSSES: tuple[str, ...] = ("bce", "bce_dice", "bce_batch_dice")
Encoder = Literal["unet", "mobilenet_v2", "efficientnet_lite0"]
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
MosaicMode = Literal["none", "grid", "random", "sites"]
MOSAIC_MODES: tuple[str, ...] = ("none", "grid", "random", "sites")
# The training label: "site", the union of the masks of the tile's site on its grid
# (`data.sites`); "own", the tile's own mask, as the study trained (to reproduce it).
Labels = Literal["site", "own"]
LABELS: tuple[str, ...] = ("site", "own")
TestTimeAugmentation = Literal["none", "flips", "d4"]
TEST_TIME_AUGMENTATIONS: tuple[str, ...] = ("none", "flips", "d4")
ENCODERS: tuple[str, ...] = ("unet", "mobilenet_v2", "efficientnet_lite0")
MAX_AUGMENT_SCALE = 0.69  # ~ln 2: zoom out to at most half size (mirror padding's limit)
# The ImageNet encoders (MobileNetV2, EfficientNet-Lite0) halve the resolution five times.
PRETRAINED_ENCODER_DEPTH = 5

# Keys of the Trainer / Transform `custom_config` dicts.
MODEL_KEY = "model"
TRAIN_KEY = "train"
TRANSFORM_KEY = "transform"
TUNE_KEY = "tune"  # the Tuner's custom_config: the Trainer's plus this
# Every trial of a search, in the Tuner's TunerResults artifact (components/tuner.py writes it,
# pipeline/tuning.py reads it; here because this module loads nothing heavy).
TRIALS_FILE = "trials.json"

DEFAULT_PRESET = "cpu"


@dataclass(frozen=True)
class ModelConfig:
    """U-Net shape. Defaults are the `cpu` preset: small enough to train on 2 CPU cores.

    `encoder="unet"`: the classic U-Net; `depth` is the number of 2x poolings, encoder level
    i has `base_width * 2**i` filters and the bottleneck `base_width * 2**depth`.
    `encoder="efficientnet_lite0"` or `"mobilenet_v2"`: that ImageNet network (its weights
    when `pretrained`) replaces the contracting path; its four skips feed decoder blocks of
    `decoder_widths` filters, then a `base_width` block at the network's input resolution.
    `depth` does not apply to them.
    """

    # ImageNet features fine-tuned beat a scratch encoder on 73 tiles: out-of-fold IoU 0.66
    # vs 0.34 on the same fold with MobileNetV2; EfficientNet-Lite0 (75% ImageNet top-1 vs
    # 72%) then beat MobileNetV2 at the same training time (see docs/model-history.md).
    encoder: Encoder = "efficientnet_lite0"
    pretrained: bool = True  # ImageNet weights for the encoder (components/pretrained.py)
    decoder_widths: tuple[int, ...] = (128, 64, 48, 32)  # pretrained encoders' decoder, deep first
    depth: int = 4
    base_width: int = 16
    batch_norm: bool = True
    # Keras' 0.99 needs hundreds of steps before the inference-time statistics settle; a
    # 90-image dataset gives ~20 steps per epoch, so val_loss would lag (and stop early).
    batch_norm_momentum: float = 0.9
    # Work at 1/input_downsample of the resolution inside the network (average-pool in,
    # bilinear up out): 4x less compute per halving and twice the context per layer.
    input_downsample: int = 2  # measured on the study's data: val IoU 0.39 vs 0.32 at 1
    dropout: float = 0.0  # on the bottleneck only, as in the original U-Net; 0: as measured
    # Dice counters the class imbalance (tailings are a minority). Per tile ("bce_dice") or
    # pooled over the batch ("bce_batch_dice"): out of fold 0.603 vs 0.598, so per tile.
    # On sites (4 folds by site, held-out sites whole and blended, site labels): "bce_dice"
    # 0.478 at its 0.70 threshold, "bce" 0.459 at its best (0.55); folds split 2-2
    # (docs/evaluation.md).
    loss: Loss = "bce_dice"
    # Raw probability that the exported model's 0.5 stands for (see unet.shift_decision_
    # threshold); chosen by cross-validation inside the train split, never on the eval split:
    # the mosaic-trained recipe's out-of-fold scene windows score best at 0.70 (IoU 0.373 vs
    # 0.354 at 0.5, pixel accuracy 0.900 vs 0.871; benchmarks/results/quality_mosaic.md).
    # Confirmed on sites: 4 folds by site, 34 held-out sites whole and blended, site labels:
    # IoU 0.478 at 0.70, flat 0.474-0.479 over 0.65-0.80, 0.454 at 0.5 (docs/evaluation.md,
    # benchmarks/results/quality_sites_4fold_blended.md).
    decision_threshold: float = 0.7
    # Average the probabilities over flipped/rotated copies of the input in the exported model
    # (every signature, so the Evaluator scores what is served): "flips" = 4 passes, "d4" = 8.
    # Out of fold: flips +0.013 and +0.025 IoU over "none" for two recipes, d4 no better.
    test_time_augmentation: TestTimeAugmentation = "flips"

    def __post_init__(self) -> None:
        # JSON (TFX custom_config) turns tuples into lists; keep the frozen value hashable.
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder != "unet" and (
            len(self.decoder_widths) != PRETRAINED_ENCODER_DEPTH - 1 or min(self.decoder_widths) < 1
        ):
            raise ValueError(
                f"decoder_widths must be {PRETRAINED_ENCODER_DEPTH - 1} positive widths, "
                f"got {self.decoder_widths}"
            )
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {self.base_width}")
        if not 0.0 < self.batch_norm_momentum < 1.0:
            raise ValueError(
                f"batch_norm_momentum must be in (0, 1), got {self.batch_norm_momentum}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.input_downsample < 1:
            raise ValueError(f"input_downsample must be >= 1, got {self.input_downsample}")
        if self.test_time_augmentation not in TEST_TIME_AUGMENTATIONS:
            raise ValueError(
                f"test_time_augmentation must be one of {TEST_TIME_AUGMENTATIONS}, "
                f"got {self.test_time_augmentation!r}"
            )
        if not 0.0 < self.decision_threshold < 1.0:
            raise ValueError(f"decision_threshold must be in (0, 1), got {self.decision_threshold}")

    @property
    def size_multiple(self) -> int:
        """Image sides must be a multiple of this (one halving per level and downsample)."""
        return 2**self.levels * self.input_downsample

    @property
    def levels(self) -> int:
        """How many times the encoder halves the resolution."""
        return self.depth if self.encoder == "unet" else PRETRAINED_ENCODER_DEPTH

    def widths(self) -> list[int]:
        """Filters per level, encoder levels then the bottleneck."""
        return [self.base_width * 2**level for level in range(self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data-feeding settings. Defaults are the `cpu` preset.

    Sizing of the `cpu` preset (2 cores, 90 pairs of 448x448, 73 in the train split): the
    EfficientNet-Lite0 U-Net at half resolution (`input_downsample=2`) fine-tunes 40 epochs
    in ~7 min (Trainer 400 s measured, validation, figures and export included; whole
    pipeline 497 s), inside the 15-minute budget. The scratch U-Net needed 60 epochs.
    """

    # 30 epochs lose to 40 out of fold by site, blended (IoU 0.467 vs 0.478 at 0.70, three folds
    # of four; docs/evaluation.md).
    epochs: int = 40
    batch_size: int = 4
    learning_rate: float = 5e-4  # fine-tuning pretrained weights: half the scratch U-Net's
    # "cosine": learning_rate * (1 + cos(pi * epoch / epochs)) / 2, set per epoch.
    lr_schedule: LrSchedule = "constant"
    early_stopping_patience: int = 12  # epochs without val_loss improvement
    # Export an exponential moving average of the weights (None: the last/best weights). With
    # ~18 steps per epoch, single-epoch weights swing the eval IoU by +-0.05 from epoch to
    # epoch; the average of the last ~100 steps does not (measured: docs/model-history.md).
    ema_momentum: float | None = 0.99
    augment_flip: bool = True  # random left-right and up-down flips
    augment_rot90: bool = True  # random multiples of 90 degrees
    # Std of a random per-band log-gain and offset applied to the normalised image (0: off).
    # Tile-to-tile spread of the band means is ~0.45 std here; 0.2 raised the out-of-fold IoU
    # from 0.569 to 0.590, one run each: within the ~0.03 seed-to-seed spread measured later
    # (see docs/model-history.md).
    augment_color: float = 0.2
    # Random zoom by exp(U(-s, s)) before cropping (0: off); 0.3 spans 0.74x-1.35x. Out of
    # fold 0.3 scored 0.572 vs 0.603 without (measured: docs/model-history.md).
    augment_scale: float = 0.0
    # How training windows are made from the tiles. The study's tiles are centred on a
    # facility; on whole tiles ("none") the network learned "tailings sit mid-tile" (IoU 0
    # once a tile is shifted 128 px: benchmarks/results/shift.md). "random" (YOLOv4's mosaic):
    # a window split at a random centre into four parts, each a random crop of another tile,
    # so facilities sit anywhere, cut by an edge or a seam, or are absent, at no fixed
    # distance from a seam. "grid": 2 x 2 whole tiles, a window cut at a random offset (as the
    # scene split is built); out of fold it scored better on scene windows than on the same
    # pixels as centred tiles (0.43 vs 0.33, fold 0): facilities always sit half a tile from
    # a seam there, a cue real scenes do not have. See docs/model-history.md.
    # "sites": no mosaic; each train site's tiles merged onto one grid (`data.sites`, site
    # labels, no data outside its tiles) and windows drawn at random positions over it, as
    # torchgeo's RandomGeoSampler draws from a georeferenced scene: real surroundings, no seams.
    # Out of fold by site (4 folds, held-out sites predicted whole and blended) it scored IoU
    # 0.380 against "random"'s 0.478 at 0.70, pixel accuracy 0.870 vs 0.910, losing 3 folds and
    # drawing 1, so "random" stays (docs/evaluation.md; 2 folds on scene windows had drawn).
    mosaic: MosaicMode = "random"
    # Chance that a mosaic part is no data (reflectance 0, labelled background), as scene
    # edges and the scene split's empty cells are: the network learns that a no-data edge is
    # not tailings.
    mosaic_empty: float = 0.1
    # "sites": the share of windows drawn where the site label holds no tailings (when the
    # site has room for one); the others fall anywhere. Not tuned (the scene split's windows
    # of real places: 15 of 32 hold no tailings).
    site_background: float = 0.25
    # Side of the random training windows (from the mosaic, or from the tile); None: the tile.
    crop_size: int | None = None
    steps_per_epoch: int | None = None  # None: one pass over the train split (or TrainArgs)
    validation_steps: int | None = None  # None: one pass over the eval split (or EvalArgs)
    shuffle_buffer: int = 128
    # After weight averaging, BatchNorm statistics are re-estimated over at most this many
    # training batches (the whole 73-tile split here; a cap for large datasets).
    recalibration_batches: int = 256
    cache: bool = True  # keep parsed examples in memory (90 tiles of 448^2 are ~300 MB)
    seed: int = 42
    max_figures: int = 32  # eval examples drawn as RGB | truth | prediction figures
    # What the network learns and the Evaluators score: "site" (the union of the tile's site's
    # masks: a pond one tile labels is tailings in every tile that shows it) or "own" (each
    # tile's own mask, the study's labels; one pond is then tailings in one tile and
    # background 50 px away in the next). The scene split scores site labels either way.
    labels: Labels = "site"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shuffle_buffer", "recalibration_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1) or None, got {self.ema_momentum}")
        if self.augment_color < 0:
            raise ValueError(f"augment_color must be >= 0, got {self.augment_color}")
        # Zooming out further than 1/2 would need more mirror padding than the tile has.
        if not 0 <= self.augment_scale < MAX_AUGMENT_SCALE:
            raise ValueError(
                f"augment_scale must be in [0, {MAX_AUGMENT_SCALE}), got {self.augment_scale}"
            )
        if self.mosaic not in MOSAIC_MODES:
            raise ValueError(f"mosaic must be one of {MOSAIC_MODES}, got {self.mosaic!r}")
        if not 0.0 <= self.mosaic_empty < 1.0:
            raise ValueError(f"mosaic_empty must be in [0, 1), got {self.mosaic_empty}")
        for name in ("crop_size", "steps_per_epoch", "validation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.max_figures < 0:
            raise ValueError(f"max_figures must be >= 0, got {self.max_figures}")
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}")
        if not 0.0 <= self.site_background <= 1.0:
            raise ValueError(f"site_background must be in [0, 1], got {self.site_background}")
        if self.mosaic == "sites" and self.labels != "site":
            raise ValueError(
                'mosaic="sites" draws windows from merged sites, which have one label: it '
                f'needs labels="site", got {self.labels!r}'
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TransformConfig:
    """What the Transform decodes to; the training set is one tile size (ExampleGen rejects a
    pair of another size: reason `tile_size`)."""

    tile_size: int = 448  # image side length in pixels
    variance_epsilon: float = 1e-6  # keeps the std finite for a constant band

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {self.tile_size}")
        if self.variance_epsilon <= 0:
            raise ValueError(f"variance_epsilon must be > 0, got {self.variance_epsilon}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TransformConfig:
        return _from_dict(cls, data)

    def to_custom_config(self) -> dict[str, Any]:
        """The `custom_config` for `tfx.components.Transform`."""
        return {TRANSFORM_KEY: self.to_dict()}

    @classmethod
    def from_custom_config(cls, custom_config: dict[str, Any] | None) -> TransformConfig:
        return cls.from_dict((custom_config or {}).get(TRANSFORM_KEY))


@dataclass(frozen=True)
class TrainerConfig:
    """Model plus training settings: one preset, and the Trainer's `custom_config`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        crop = self.train.crop_size
        if crop is not None and crop % self.model.size_multiple:
            raise ValueError(f"crop_size {crop} must be a multiple of {self.model.size_multiple}")

    def check_tile_size(self, tile: int) -> None:
        """Raise ValueError if tiles of `tile` pixels (or the training crops) cannot pass
        through the network: one check for the Trainer, `tailings run` and the benchmarks."""
        multiple = self.model.size_multiple
        if tile % multiple:
            raise ValueError(
                f"the network needs image sides that are multiples of {multiple} (2**levels x "
                f"model.input_downsample), but the tiles are {tile} pixels"
            )
        crop = self.train.crop_size
        if crop is not None and crop > tile:
            raise ValueError(f"crop_size {crop} is larger than the tile size {tile}")

    def to_custom_config(self) -> dict[str, Any]:
        """The `custom_config` for `tfx.components.Trainer`."""
        return {MODEL_KEY: self.model.to_dict(), TRAIN_KEY: self.train.to_dict()}

    @classmethod
    def from_custom_config(cls, custom_config: dict[str, Any] | None) -> TrainerConfig:
        custom_config = custom_config or {}
        return cls(
            model=ModelConfig.from_dict(custom_config.get(MODEL_KEY)),
            train=TrainConfig.from_dict(custom_config.get(TRAIN_KEY)),
        )


@dataclass(frozen=True)
class TuneConfig:
    """The hyperparameter search of TFX's Tuner (`tailings run --tune`; components/tuner_lib.py).

    Every trial trains with the Trainer's code (`cross_validation.train_and_predict`) on the
    train split minus one fold and is scored by the tailings IoU on scene windows of that
    held-out fold (mosaics of its tiles cut on a shifted grid, as ExampleGen builds the scene
    split), never on the centred eval tiles and never on the scene split that decides the
    blessing. The search space is the ranges below; each hyperparameter is named by the
    `--set` path it changes, so the best values reach the Trainer as `--set` would.
    """

    # KerasTuner's max_trials. 8 trials of 15 epochs on the study's data: 69 min on 2 busy
    # cores, the best 0.010 IoU above the preset, within seed noise (docs/tuning.md).
    trials: int = 8
    # Epochs of each trial (the Trainer then trains the preset's epochs with the best values);
    # 15 of the preset's 40: a trial costs 10-25 min on 2 cores instead of 30-60.
    epochs: int = 15
    # Trials in parallel: KerasTuner's chief oracle plus this many worker processes
    # (TFX's TuneArgs.num_parallel_trials); 1 runs the trials inside the Tuner's process.
    workers: int = 1
    # The train split's pairs are cut in `folds` folds by `cross_validation.fold_of`; fold 0
    # is held out for scoring: of the study's 73 training tiles the hash holds out 25
    # (2 mosaics), and the trials train on 48.
    folds: int = 4
    # Bayesian optimisation draws this many trials at random before its Gaussian process
    # proposes the rest (KerasTuner's default, 3 per hyperparameter = 15, would leave a
    # budget of 8 trials entirely random); None: half the trials.
    initial_points: int | None = None
    seed: int = 42  # the oracle's; each trial trains with the preset's train.seed
    # The space. Learning rate: log-uniform around the preset's 5e-4 (the study's 1e-3 inside).
    learning_rate: tuple[float, float] = (1e-4, 2e-3)
    batch_sizes: tuple[int, ...] = (2, 4, 8)
    losses: tuple[str, ...] = ("bce", "bce_dice")
    # train.augment_color ("band jitter"): 0 to 0.4 in steps of 0.1 (the preset's 0.2 inside).
    band_jitter: tuple[float, float] = (0.0, 0.4)
    band_jitter_step: float = 0.1
    # Multiples of the preset's decoder widths (pretrained encoders) or base width (scratch
    # U-Net): the encoders' own widths are fixed by their ImageNet weights.
    width_scales: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_sizes", "losses", "band_jitter", "width_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("trials", "epochs", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--tune-{name} must be at least 1, got {getattr(self, name)}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.initial_points is not None and self.initial_points < 1:
            raise ValueError(f"initial_points must be >= 1 or None, got {self.initial_points}")
        low, high = self.learning_rate
        if not 0 < low < high:
            raise ValueError(f"learning_rate must be a range 0 < low < high, got {low}, {high}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be whole numbers >= 1, got {self.batch_sizes}")
        if not self.losses or any(loss not in LOSSES for loss in self.losses):
            raise ValueError(f"losses must be some of {LOSSES}, got {self.losses}")
        low, high = self.band_jitter
        if not 0 <= low <= high or self.band_jitter_step <= 0:
            raise ValueError("band_jitter must be a range 0 <= low <= high, with a step > 0")
        if not self.width_scales or min(self.width_scales) <= 0:
            raise ValueError(f"width_scales must be > 0, got {self.width_scales}")

    @property
    def random_points(self) -> int:
        return self.initial_points or max(1, self.trials // 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TuneConfig:
        return _from_dict(cls, data)


PRESETS: dict[str, TrainerConfig] = {
    "cpu": TrainerConfig(),
    # The original study's network and schedule (slow on CPU: ~7.6 s per image per step).
    "study": TrainerConfig(
        model=ModelConfig(
            encoder="unet",
            depth=4,
            base_width=64,
            batch_norm=True,
            batch_norm_momentum=0.99,  # Keras' default, as the study used
            dropout=0.0,
            loss="bce",
            input_downsample=1,  # full resolution, as the study
            test_time_augmentation="none",
            decision_threshold=0.5,
        ),
        train=TrainConfig(
            epochs=5,
            batch_size=6,
            learning_rate=1e-3,
            early_stopping_patience=5,
            ema_momentum=None,
            augment_flip=False,
            augment_rot90=False,
            augment_color=0.0,
            mosaic="none",  # whole tiles, as the study trained
            mosaic_empty=0.0,
        ),
    ),
}


def preset(name: str = DEFAULT_PRESET) -> TrainerConfig:
    """Look a preset up by name, with a helpful error for typos."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


def with_overrides(config: TrainerConfig, assignments: Sequence[str]) -> TrainerConfig:
    """Apply `model.FIELD=VALUE` / `train.FIELD=VALUE` changes in order (`tailings run --set`).

    VALUE is JSON (`0.5`, `null`, `[8, 8, 8, 8]`, `"flips"`); anything that is not JSON is
    taken as a string, so `model.encoder=unet` works unquoted. Every change is validated
    as the dataclasses validate their defaults.
    """
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        part, _, name = key.strip().partition(".")
        if not equals or part not in (MODEL_KEY, TRAIN_KEY) or not name:
            raise ValueError(f"{assignment!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        section = getattr(config, part)
        known = {f.name for f in dataclasses.fields(section)}
        if name not in known:
            raise ValueError(
                f"{assignment!r}: {type(section).__name__} has no field {name!r}; "
                f"known: {sorted(known)}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        try:
            value = _typed(value, typing.get_type_hints(type(section))[name])
        except ValueError as err:
            raise ValueError(f"{assignment!r}: {name} {err}") from None
        try:
            config = dataclasses.replace(
                config, **{part: dataclasses.replace(section, **{name: value})}
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{assignment!r}: {err}") from None
    return config


def hyperparameter_overrides(values: dict[str, Any]) -> list[str]:
    """KerasTuner hyperparameter values, named by `--set` paths, as `--set` assignments.

    Choices that are not numbers or text (decoder widths) travel through KerasTuner as their
    JSON text, which `with_overrides` parses back.
    """
    return [
        f"{name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in sorted(values.items())
    ]


def with_hyperparameters(config: TrainerConfig, hyperparameters: dict[str, Any]) -> TrainerConfig:
    """`config` with the Tuner's best hyperparameters (TFX hands the Trainer KerasTuner's
    `HyperParameters.get_config()`: `{"space": [...], "values": {...}}`) applied as `--set`."""
    return with_overrides(config, hyperparameter_overrides(hyperparameters.get("values", {})))


def _typed(value: Any, hint: Any) -> Any:
    """`value` (parsed from JSON) as the field's declared type; ValueError("must be ...").

    Written by hand because dataclasses do not check types: `batch_size=2.5`, `epochs=true`
    or `learning_rate=NaN` would be stored as given, and `batch_norm="False"` is a non-empty
    string, so it would count as true and the option would silently stay on.
    """
    if not _fits(value, hint):
        raise ValueError(f"must be {_describe(hint)}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if float in _members(hint) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # `learning_rate=1` is the float 1.0, as the default's type
    return value


def _members(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"a list like [8, 8] of: {_describe(args[0])}"
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a finite number",
        str: "text",
    }.get(hint, str(hint))


_T = TypeVar("_T")


def _from_dict(cls: type[_T], data: dict[str, Any] | None) -> _T:
    """Rebuild a config dataclass; unknown keys are an error so typos do not pass silently."""
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**data)
