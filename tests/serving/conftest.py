"""Servers and clients for the serving tests: real HTTP on 127.0.0.1, real pushed models.

The served model, the server and the reference model are read-only and shared by the whole
session: each module that started its own server loaded the model again (seconds each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from serving.config import ServerConfig
from serving.model_config import load_model_config
from serving.server import EmbeddedServer

# Small enough that a test can send a body over it (413), big enough for a batch of 64x64 tiles.
TEST_BODY_LIMIT = 4 * 2**20
LABEL = "stable"
REQUEST_TIMEOUT = 60.0  # seconds; generous for 2 busy cores, finite so a test cannot hang


def copy_version(source: Path, base_path: Path, version: int) -> Path:
    """Copy a pushed version in as TF Serving expects it: a hidden copy renamed into place."""
    base_path.mkdir(parents=True, exist_ok=True)
    temp = base_path / f".tmp-copy-{version}"
    shutil.copytree(source, temp)
    target = base_path / str(version)
    temp.rename(target)
    return target


def write_models_config(path: Path, name: str, base_path: Path, extra: str = "") -> Path:
    path.write_text(
        "model_config_list {\n  config {\n"
        f'    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
        f"{extra}  }}\n}}\n"
    )
    return path


@pytest.fixture(scope="session")
def pushed(pipeline_run):
    """(PipelineConfig, version 1 folder) of the session's real pipeline run; read-only."""
    cfg, summary = pipeline_run
    assert summary.pushed_version == "1", summary.lines()
    return cfg, cfg.push_dir / "1"


@pytest.fixture(scope="session")
def server(pushed, tmp_path_factory):
    """The embedded server on a free port, serving the pushed model with a `stable` label."""
    cfg, _ = pushed
    config = write_models_config(
        tmp_path_factory.mktemp("config") / "models.config",
        cfg.model_name,
        cfg.push_dir.resolve(),
        extra=f'    version_labels {{ key: "{LABEL}" value: 1 }}\n',
    )
    entries = load_model_config(config, models_dir=cfg.serving_dir)
    server = EmbeddedServer(entries, ServerConfig(port=0, max_body_bytes=TEST_BODY_LIMIT))
    server.start()
    assert server.manager.wait_available(cfg.model_name, timeout=120)
    yield server
    server.stop()


class Http(requests.Session):
    """A keep-alive session whose every request has a timeout, so no test can hang on one."""

    def request(self, *args, timeout: float = REQUEST_TIMEOUT, **kwargs):
        return super().request(*args, timeout=timeout, **kwargs)


@pytest.fixture
def http():
    with Http() as session:
        yield session


@pytest.fixture(scope="session")
def reference(pushed):
    """The pushed model loaded straight with TensorFlow: what every REST and gRPC answer must
    match."""
    import tensorflow as tf

    _, version_dir = pushed
    return tf.saved_model.load(str(version_dir))


@pytest.fixture(scope="session")
def converter_example(tmp_path_factory) -> bytes:
    """A full tf.Example as `tailings convert` writes it (labels and metadata included, so
    `transform_features` finds the mask)."""
    from data.examples import to_example
    from data.pairs import PairSpec, load_pair
    from tests.fixtures.geotiffs import make_pair
    from tests.fixtures.pipeline import TILE

    root = tmp_path_factory.mktemp("pair")
    image, mask = make_pair(root / "img", root / "mask", "x", (TILE, TILE), seed=7)
    return to_example(load_pair(PairSpec("x", str(image), str(mask)))).SerializeToString()
