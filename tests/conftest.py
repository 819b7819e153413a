"""Shared pytest setup: Keras 2 for TFX, and where the real study data lives."""

import os
from pathlib import Path

import pytest

from tests.fixtures.object_store import object_store, point_tensorflow_here  # noqa: F401

# TFX/TFMA 1.16 need Keras-2 SavedModels; this must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.io.gfile's gs:// is the tensorflow-io plugin aimed at the session's local object store
# (the `object_store` fixture), which TensorFlow takes only if told before its import.
point_tensorflow_here()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(
    os.environ.get("TAILINGS_REAL_DATA", PROJECT_ROOT.parent / "shared" / "brazil-tailings")
)


@pytest.fixture
def real_data() -> Path:
    """The study's pairs from ../shared/brazil-tailings, or a skip that says why."""
    if not (REAL_DATA / "img").is_dir() or not (REAL_DATA / "mask").is_dir():
        pytest.skip(
            f"real data not found at {REAL_DATA} (expected img/ and mask/); "
            "set TAILINGS_REAL_DATA or run `tailings fetch-data`"
        )
    return REAL_DATA


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One real pipeline run on 14 synthetic 64x64 pairs with a tiny U-Net, shared by all tests.

    Returns (PipelineConfig, RunSummary); the blessed model is pushed to `cfg.push_dir / "1"`.
    Tests that run the pipeline again in the same folders must not delete that version.
    """
    from pipeline.runner import run_pipeline
    from tests.fixtures.geotiffs import make_pairs
    from tests.fixtures.pipeline import TILE, tiny_config

    root = tmp_path_factory.mktemp("pipeline-run")
    make_pairs(root / "data", 14, size=(TILE, TILE))
    cfg = tiny_config(root, root / "data")
    return cfg, run_pipeline(cfg, say=lambda _m: None)
