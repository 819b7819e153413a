"""Fixtures for the component tests: one real TFT Beam run shared by every test that needs it."""

from __future__ import annotations

import pytest

from components.config import TransformConfig
from tests.components import synthetic

TILE = 32
TRAIN_EXAMPLES = 8
EVAL_EXAMPLES = 4


@pytest.fixture(scope="session")
def transform_config() -> TransformConfig:
    return TransformConfig(tile_size=TILE)


@pytest.fixture(scope="session")
def raw_splits() -> dict[str, list[dict]]:
    return {
        synthetic.TRAIN: synthetic.make_instances(TRAIN_EXAMPLES, TILE, seed=0),
        synthetic.EVAL: synthetic.make_instances(EVAL_EXAMPLES, TILE, seed=1),
    }


@pytest.fixture(scope="session")
def transform_run(tmp_path_factory, raw_splits, transform_config) -> synthetic.TransformRun:
    work_dir = tmp_path_factory.mktemp("transform")
    return synthetic.run_transform(raw_splits, work_dir, transform_config)
