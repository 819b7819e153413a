"""The Dockerfile, checked statically: no container engine here to build it.

What is checked: a pinned base (by digest or an exact version: Beam's Python 3.10 SDK image of
the Beam in uv.lock), uv.lock copied and installed with `uv sync --frozen`, every package of the
project copied, the entrypoint module the compiled spec calls present in this environment and
first on PATH in the image, a non-root user, and a .dockerignore that keeps local state out.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import tomli  # Python 3.10 has no tomllib; pytest itself depends on tomli there

from pipeline.compile import ENTRYPOINT_MODULE
from tests.conftest import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
PINNED = re.compile(r"^[^:@\s]+(:(?P<tag>[0-9][\w.-]*))?(@sha256:[0-9a-f]{64})?$")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE)


def _locked_version(name: str) -> str:
    lock = tomli.loads((PROJECT_ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == name)


def _pinned(image: str) -> bool:
    match = PINNED.match(image)
    return bool(match) and ("@sha256:" in image or match.group("tag") is not None)


def test_every_image_is_pinned_and_the_base_is_beams_sdk_of_the_locked_version(steps):
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    copied_from = [
        m.group(1)
        for word, args in steps
        if word == "COPY"
        for m in [re.search(r"--from=(\S+)", args)]
        if m
    ]
    assert bases, "no FROM"
    for image in bases + copied_from:
        assert _pinned(image), f"{image} is not pinned by digest or version"
    beam = _locked_version("apache-beam")
    assert bases[-1].split("@")[0] == f"apache/beam_python3.10_sdk:{beam}"


def test_the_lock_is_copied_and_installed_frozen(steps):
    copies = [args for word, args in steps if word == "COPY"]
    lock_copy = next(i for i, (w, a) in enumerate(steps) if w == "COPY" and "uv.lock" in a.split())
    syncs = [i for i, (w, a) in enumerate(steps) if w == "RUN" and "uv sync" in a]
    assert syncs and all(i > lock_copy for i in syncs)
    for i in syncs:
        assert "--frozen" in steps[i][1] and "--no-dev" in steps[i][1]
    assert any("uv venv --seed" in a for w, a in steps if w == "RUN")  # as `make setup`
    packages = tomli.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    copied = {a.split()[0] for a in copies}
    assert set(packages) <= copied, f"packages not copied: {set(packages) - copied}"


def test_the_entrypoint_the_compiled_spec_calls_exists_and_runs_in_the_venv(steps):
    # The compiled spec's container command is `python -m ENTRYPOINT_MODULE`
    # (tests/pipeline/test_compile.py); the module ships with the locked TFX.
    tfx = importlib.util.find_spec("tfx")
    assert tfx is not None and tfx.origin
    module = Path(tfx.origin).parent.parent / (ENTRYPOINT_MODULE.replace(".", "/") + ".py")
    assert module.is_file(), module
    env = " ".join(a for w, a in steps if w == "ENV")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", env).group(1)
    assert f"PATH={venv}/bin:" in env  # `python` is the venv's
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env  # Dataflow workers use it too
    entrypoints = [a for w, a in steps if w == "ENTRYPOINT"]
    assert entrypoints[-1] == '["/opt/apache/beam/boot"]'  # Dataflow's custom-container boot


def test_the_compiled_pipeline_finds_the_project_where_the_image_has_it(steps):
    from pipeline.config import RemoteLocations

    workdir = [a for w, a in steps if w == "WORKDIR"][-1]
    assert workdir == RemoteLocations("gs://r", "gs://d", "gs://s").image_project_dir
    assert any(w == "COPY" and a.split() == ["schemas", "./schemas"] for w, a in steps)


def test_the_image_runs_as_a_non_root_user(steps):
    users = [a for w, a in steps if w == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert not any(w == "RUN" for w, _ in steps[last_user:])


def test_dockerignore_keeps_local_state_out():
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {
        ".git",
        ".venv",
        ".tools",
        "outputs",
        "data/brazil-tailings",
        "serving/models",
    } <= ignored
