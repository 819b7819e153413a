"""What every verb shares (`tailings.common`)."""

from __future__ import annotations

import pytest

from pipeline.config import LabelReviewConfig, Thresholds
from serving.config import PredictConfig, ServerConfig
from tailings.common import CliError, config_from_flags


@pytest.mark.parametrize(
    ("config", "fields", "message"),
    [
        (PredictConfig, {"tile": 0}, "tile must be >= 1, got 0"),
        (ServerConfig, {"threads": 0}, "threads must be >= 1, got 0"),
        (LabelReviewConfig, {"folds": 1}, "--folds must be at least 2, got 1"),
        (Thresholds, {"min_iou": 2.0}, "--min-iou must be a number in [0, 1], got 2.0"),
    ],
)
def test_a_bad_flag_value_is_a_cli_error_with_the_configs_message(config, fields, message):
    with pytest.raises(CliError) as err:
        config_from_flags(config, **fields)
    assert str(err.value) == message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chain


def test_good_values_give_the_config_and_other_errors_stay_errors():
    assert config_from_flags(PredictConfig, tile=64, overlap=16) == PredictConfig(64, 16)
    with pytest.raises(TypeError):  # a field that does not exist is the code's mistake
        config_from_flags(PredictConfig, tiles=64)
