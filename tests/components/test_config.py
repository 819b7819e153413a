"""Configs must survive the JSON trip through TFX custom_config and reject bad values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from components.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    TrainerConfig,
    TransformConfig,
    preset,
    with_overrides,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    config = PRESETS[name]
    custom_config = json.loads(json.dumps(config.to_custom_config()))
    assert TrainerConfig.from_custom_config(custom_config) == config


def test_transform_config_round_trips_and_defaults() -> None:
    config = TransformConfig(tile_size=64)
    custom_config = json.loads(json.dumps(config.to_custom_config()))
    assert TransformConfig.from_custom_config(custom_config) == config
    assert TransformConfig.from_custom_config(None) == TransformConfig()
    assert TransformConfig().tile_size == 448


def test_missing_custom_config_means_cpu_preset() -> None:
    assert TrainerConfig.from_custom_config(None) == PRESETS["cpu"] == preset()


def test_partial_dicts_fill_in_defaults() -> None:
    config = TrainerConfig.from_custom_config({"model": {"depth": 2}, "train": {"epochs": 1}})
    assert config.model == ModelConfig(depth=2)
    assert config.train == TrainConfig(epochs=1)


def test_study_preset_is_the_original_network() -> None:
    study = preset("study")
    assert study.model.widths()[:4] == [64, 128, 256, 512]
    assert study.model.depth == 4 and study.model.encoder == "unet"
    assert study.model.batch_norm
    assert study.model.loss == "bce"
    assert (study.train.learning_rate, study.train.batch_size, study.train.epochs) == (1e-3, 6, 5)
    assert study.train.ema_momentum is None and study.model.decision_threshold == 0.5
    # none of this project's additions: no band jitter, one forward pass per image
    assert study.train.augment_color == 0.0 and study.model.test_time_augmentation == "none"
    assert study.train.augment_scale == 0.0


def test_cpu_preset_is_small() -> None:
    cpu = preset("cpu")
    assert cpu.model.base_width == 16
    assert cpu.model.encoder == "efficientnet_lite0" and cpu.model.pretrained
    assert cpu.train.crop_size is None or cpu.train.crop_size % cpu.model.size_multiple == 0


def test_decoder_widths_only_matter_to_pretrained_encoders() -> None:
    assert ModelConfig(encoder="unet", decoder_widths=()).decoder_widths == ()


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "efficientnet_lite0"])
def test_pretrained_encoder_sizes_and_json_widths(encoder) -> None:
    config = ModelConfig(encoder=encoder, input_downsample=2, depth=3)
    assert config.size_multiple == 64  # five halvings whatever `depth` says, then 2x
    assert ModelConfig.from_dict({"decoder_widths": [8, 8, 8, 8]}).decoder_widths == (8, 8, 8, 8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ModelConfig(loss="dice"),
        lambda: ModelConfig(depth=0),
        lambda: ModelConfig(dropout=1.0),
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(learning_rate=0.0),
        lambda: TrainConfig(ema_momentum=1.0),
        lambda: ModelConfig(decision_threshold=0.0),
        lambda: ModelConfig(encoder="resnet50"),
        lambda: ModelConfig(decoder_widths=(64, 32)),
        lambda: ModelConfig(encoder="efficientnet_lite0", decoder_widths=(8, 8, 8, 0)),
        lambda: TrainConfig(recalibration_batches=0),
        lambda: ModelConfig(test_time_augmentation="d8"),
        lambda: TrainConfig(lr_schedule="step"),
        lambda: TrainConfig(augment_color=-0.1),
        lambda: TrainConfig(augment_scale=-0.1),
        lambda: TrainConfig(augment_scale=0.7),  # zooming out past 1/2: mirror padding's limit
        lambda: TrainConfig(mosaic="quilt"),
        lambda: TrainConfig(mosaic_empty=1.0),
        lambda: TrainConfig(mosaic_empty=-0.1),
        lambda: TransformConfig(tile_size=0),
        lambda: TrainerConfig(model=ModelConfig(depth=3), train=TrainConfig(crop_size=100)),
        lambda: ModelConfig.from_dict({"depht": 3}),
        lambda: preset("gpu"),
    ],
)
def test_bad_values_are_rejected(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_overrides_change_one_field_each_in_order() -> None:
    base = preset("cpu")
    changed = with_overrides(
        base,
        [
            "model.encoder=unet",  # a bare string
            'model.test_time_augmentation="none"',  # or JSON
            "train.batch_size=8",
            "train.ema_momentum=null",
            "model.decoder_widths=[8, 8, 8, 8]",
            "train.batch_size=2",
        ],
    )
    assert changed.model.encoder == "unet" and changed.model.test_time_augmentation == "none"
    assert changed.train.batch_size == 2 and changed.train.ema_momentum is None
    assert changed.model.decoder_widths == (8, 8, 8, 8)
    assert changed.train.epochs == base.train.epochs  # untouched fields keep the preset's
    assert with_overrides(base, []) == base
    typed = with_overrides(
        base, ["model.batch_norm=false", "train.learning_rate=1", "model.dropout=0"]
    )
    assert typed.model.batch_norm is False
    assert typed.train.learning_rate == 1.0 and isinstance(typed.train.learning_rate, float)


@pytest.mark.parametrize(
    ("assignment", "says"),
    [
        ("model.depth", "expected model.FIELD=VALUE"),
        ("transform.tile_size=64", "expected model.FIELD=VALUE"),
        ("train.epoch=3", "no field 'epoch'"),
        ("train.epochs=0", "epochs must be >= 1"),
        ("train.crop_size=100", "multiple of 64"),
        # Values must have the field's type (dataclasses do not check): issue 20, item 5.
        ("train.batch_size=2.5", "batch_size must be a whole number, got 2.5"),
        ("train.epochs=true", "epochs must be a whole number, got True"),
        ("train.learning_rate=NaN", "learning_rate must be a finite number, got nan"),
        ("train.learning_rate=fast", "learning_rate must be a finite number, got 'fast'"),
        ("train.steps_per_epoch=0", "steps_per_epoch must be >= 1 or None"),
        ("model.batch_norm=False", "batch_norm must be true or false, got 'False'"),
        ("train.cache=False", "cache must be true or false"),
        ("model.pretrained=no", "pretrained must be true or false, got 'no'"),
        ("train.mosaic=tiles", "mosaic must be one of none, grid, random"),
        ("model.decoder_widths=[8, 8.5]", "decoder_widths must be a list like .* of: a whole"),
        ("train.ema_momentum=high", "ema_momentum must be a finite number or null, got 'high'"),
    ],
)
def test_bad_overrides_name_the_assignment(assignment: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as err:
        with_overrides(preset("cpu"), [assignment])
    assert assignment in str(err.value)


def test_tile_size_check_names_the_multiple_and_the_crop() -> None:
    config = preset("cpu")  # size multiple 64
    config.check_tile_size(448)
    with pytest.raises(ValueError, match="multiples of 64 .* tiles are 480 pixels"):
        config.check_tile_size(480)
    cropped = dataclasses.replace(config, train=dataclasses.replace(config.train, crop_size=512))
    with pytest.raises(ValueError, match="crop_size 512 is larger than the tile size 448"):
        cropped.check_tile_size(448)
