"""The version manager against TF Serving's rules, with a stand-in loader (no TensorFlow).

Every test drives `poll_once()` by hand, so nothing depends on timing: a "poll" is one look at
the base path, as TF Serving's file system source makes every --file_system_poll_wait_seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.config import ServerConfig
from serving.errors import INVALID_ARGUMENT, NOT_FOUND, ServingError
from serving.manager import AVAILABLE, END, LOADING, ModelManager
from serving.model_config import ModelEntry, VersionPolicy

BROKEN = "half-copied"  # a file that makes the stand-in loader fail, as a partial copy would


class FakeServable:
    """What the manager needs of a loaded version."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version, self.path = name, version, path

    def enter(self) -> None:
        pass

    def leave(self) -> None:
        pass

    def wait_idle(self, timeout: float) -> bool:
        return True


class Loader:
    """Loads a version folder unless it holds BROKEN; counts the attempts per version."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}

    def __call__(self, name: str, version: int, path: Path) -> FakeServable:
        self.attempts[version] = self.attempts.get(version, 0) + 1
        if (path / BROKEN).exists():
            raise OSError(f"{path}/saved_model.pb: truncated")
        return FakeServable(name, version, path)


def add_version(base: Path, version: int, broken: bool = False) -> None:
    folder = base / str(version)
    folder.mkdir(parents=True)
    if broken:
        (folder / BROKEN).write_text("")


def states(manager: ModelManager, name: str = "m") -> dict[int, str]:
    return {v: s.state for v, s in manager.version_states(name)}


def make_manager(tmp_path: Path, **config) -> tuple[ModelManager, Loader, Path]:
    base = tmp_path / "m"
    base.mkdir()
    loader = Loader()
    cfg = ServerConfig(port=0, warmup=False, **config)
    manager = ModelManager([ModelEntry("m", base)], cfg, loader=loader, say=lambda _: None)
    return manager, loader, base


def test_retry_defaults_are_tf_servings():
    # model_servers/server.h:68-69 (2.16.1): 5 retries, 1 minute apart.
    assert ServerConfig().load_retries == 5
    assert ServerConfig().load_retry_seconds == 60.0


def test_failing_version_is_retried_max_times_then_given_up_while_on_disk(tmp_path):
    manager, loader, base = make_manager(tmp_path, load_retries=2, load_retry_seconds=0)
    add_version(base, 1)
    manager.poll_once()
    add_version(base, 2, broken=True)
    for _ in range(6):
        manager.poll_once()
    assert loader.attempts[2] == 3  # the first attempt and 2 retries
    (status,) = [s for v, s in manager.version_states("m") if v == 2]
    assert status.state == END and status.error_code != 0 and "truncated" in status.error_message
    assert states(manager)[1] == AVAILABLE  # availability preserved: 1 keeps serving


def test_retries_wait_the_interval(tmp_path):
    manager, loader, base = make_manager(tmp_path, load_retries=5, load_retry_seconds=3600)
    add_version(base, 1, broken=True)
    for _ in range(3):
        manager.poll_once()
    assert loader.attempts[1] == 1
    assert states(manager) == {1: LOADING}  # waiting for its retry, as TF Serving shows it


@pytest.mark.parametrize("interval", [0, 3600], ids=["given up (END)", "waiting for a retry"])
def test_failed_version_loads_again_after_it_left_the_disk_and_came_back(tmp_path, interval):
    """Issue 16, 1: TF Serving forgets a failed version once it leaves the aspired set
    (aspired_versions_manager.cc:418-443), so a complete copy under the same number loads."""
    manager, loader, base = make_manager(tmp_path, load_retries=1, load_retry_seconds=interval)
    add_version(base, 1)
    manager.poll_once()
    add_version(base, 2, broken=True)
    for _ in range(3):
        manager.poll_once()
    assert states(manager)[2] in (END, LOADING) and states(manager)[1] == AVAILABLE

    shutil.rmtree(base / "2")
    manager.poll_once()  # 2 is gone: version 1 is the aspired one again
    assert states(manager) == {2: END, 1: AVAILABLE}
    add_version(base, 2)  # the complete copy, under the same number
    manager.poll_once()
    assert states(manager) == {2: AVAILABLE, 1: END}
    with manager.servable("m") as servable:
        assert servable.version == 2


def test_status_by_label_is_every_version_as_tf_serving(tmp_path):
    """Issue 16, 3: TF Serving's status API ignores the label (get_model_status_impl.cc:82-107)."""
    base = tmp_path / "m"
    for version in (1, 2):
        add_version(base, version)
    entry = ModelEntry("m", base, VersionPolicy("all"), labels={"stable": 1, "canary": 2})
    manager = ModelManager([entry], ServerConfig(port=0, warmup=False), loader=Loader())
    manager.poll_once()
    every = [(2, AVAILABLE), (1, AVAILABLE)]
    for label in ("stable", "canary", "no-such-label"):
        assert [(v, s.state) for v, s in manager.version_states("m", label=label)] == every
    with pytest.raises(ServingError) as err:
        manager.version_states("nope", label="stable")
    assert (err.value.code, err.value.message) == (
        NOT_FOUND,
        "Could not find any versions of model nope",
    )
    # Serving by label resolves it; any label of an unknown model is an unknown label
    # (server_core.cc:822-841 GetModelVersionForLabel).
    with manager.servable("m", label="stable") as servable:
        assert servable.version == 1
    with pytest.raises(ServingError) as err:
        with manager.servable("nope", label="stable"):
            pass
    assert err.value.code == INVALID_ARGUMENT
    assert err.value.message == "Unrecognized servable version label: stable"
