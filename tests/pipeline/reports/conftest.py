"""Data for the report tests: TFRecord folders made by the real conversion, and their statistics.

The "same" folder holds the very pairs the shared `pipeline_run` trains on (plus one broken
pair, so there is a rejection to show); "bright" is the same scenes 1.6 times brighter (still
valid reflectance: drift, not an anomaly); "red" is the same scenes with only the red band (B4)
1.3 times brighter (drift in one band); "raw_dn" is scenes as raw digital numbers (anomalies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.config import ConversionConfig
from data.convert import run_conversion
from pipeline.reports import stats
from tests.fixtures.geotiffs import make_pair, make_pairs, scene
from tests.fixtures.pipeline import TILE

PAIRS = 14  # as in the shared pipeline_run
BRIGHTNESS = 1.6
RED_GAIN = 1.3  # the red band alone, as in issue 17


def convert(root: Path) -> Path:
    out = root / "examples"
    run_conversion(str(root / "img"), str(root / "mask"), str(out), ConversionConfig(shards=2))
    return out


@pytest.fixture(scope="session")
def same_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("same")
    make_pairs(root, PAIRS, size=(TILE, TILE))
    image, mask = scene(TILE, TILE, seed=99)
    make_pair(root / "img", root / "mask", "broken", image=image, mask=mask * 2)
    return convert(root)


@pytest.fixture(scope="session")
def bright_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bright")
    for i in range(PAIRS):
        image, mask = scene(TILE, TILE, seed=i)
        brighter = np.clip(image * BRIGHTNESS, 0.0, 1.0).astype(np.float32)
        make_pair(root / "img", root / "mask", str(i + 1), image=brighter, mask=mask)
    return convert(root)


@pytest.fixture(scope="session")
def red_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("red")
    for i in range(PAIRS):
        image, mask = scene(TILE, TILE, seed=i)
        image[2] = np.clip(image[2] * RED_GAIN, 0.0, 1.0)  # (3, H, W): B2, B3, B4
        make_pair(root / "img", root / "mask", str(i + 1), image=image, mask=mask)
    return convert(root)


@pytest.fixture(scope="session")
def raw_dn_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw-dn")
    for i in range(3):
        image, mask = scene(TILE, TILE, seed=i)
        make_pair(root / "img", root / "mask", str(i + 1), image=image * 10000, mask=mask)
    return convert(root)


@pytest.fixture(scope="session")
def same_stats(same_folder) -> stats.DataStats:
    return stats.from_examples(same_folder)


@pytest.fixture(scope="session")
def bright_stats(bright_folder) -> stats.DataStats:
    return stats.from_examples(bright_folder)


@pytest.fixture(scope="session")
def red_stats(red_folder) -> stats.DataStats:
    return stats.from_examples(red_folder)


@pytest.fixture(scope="session")
def run_stats(pipeline_run) -> stats.DataStats:
    cfg, summary = pipeline_run
    return stats.from_run(cfg, summary.run_id)
