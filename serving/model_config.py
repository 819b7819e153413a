"""Which models to serve, from where, and which versions: TF Serving's `ModelServerConfig`.

One `serving/models.config` serves both engines. Its base paths are the container's
(`/models/<name>`, where compose.yaml mounts `serving/models`); on the host they are read from
`--model-base-path` instead. Parsing uses TF Serving's own proto, so a file that loads here
loads in `tensorflow_model_server` too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from data.errors import TailingsError
from serving.config import CONTAINER_MODELS_DIR, MODEL_NAME_RE

PolicyKind = Literal["latest", "all", "specific"]


class ModelConfigError(TailingsError, ValueError):
    """The model config file (or a model name) is unusable; the message names the file."""


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's `ServableVersionPolicy`: which numeric versions on disk to serve."""

    kind: PolicyKind = "latest"
    num_versions: int = 1  # latest: how many of the newest
    versions: tuple[int, ...] = ()  # specific: exactly these

    def select(self, on_disk: list[int]) -> list[int]:
        """The aspired versions among those on disk, newest first."""
        newest_first = sorted(on_disk, reverse=True)
        if self.kind == "all":
            return newest_first
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first[: self.num_versions]

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ",".join(str(v) for v in self.versions)
        return "all"


@dataclass(frozen=True)
class ModelEntry:
    """One served model: its name in URLs, its folder of version folders, policy and labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)
    # The config file the entry came from, for errors that must name it (not part of equality:
    # the same model read from two files is the same model).
    source: Path | None = field(default=None, compare=False)


def check_model_name(name: str, where: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ModelConfigError(
            f"{where}: model name {name!r} must be letters, digits, '_', '.', '-' "
            "(it becomes part of URLs)"
        )
    return name


def single_model(models_dir: Path, name: str) -> ModelEntry:
    """`--model-base-path DIR --model-name NAME`: versions under DIR/NAME, latest one served.

    As TF Serving's docker image: MODEL_BASE_PATH=/models, MODEL_NAME=tailings.
    """
    check_model_name(name, "--model-name")
    return ModelEntry(name=name, base_path=Path(models_dir) / name)


def host_base_path(base_path: str, models_dir: Path, config_dir: Path) -> Path:
    """A config `base_path` on this machine: container paths map into `models_dir`."""
    posix = PurePosixPath(base_path)
    if posix == CONTAINER_MODELS_DIR or CONTAINER_MODELS_DIR in posix.parents:
        return Path(models_dir) / posix.relative_to(CONTAINER_MODELS_DIR)
    path = Path(base_path)
    return path if path.is_absolute() else config_dir / path


def _policy(config, where: str) -> VersionPolicy:
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which is None or which == "latest":
        num = policy.latest.num_versions if which else 1
        if which and num < 1:
            raise ModelConfigError(f"{where}: latest.num_versions must be >= 1, got {num}")
        return VersionPolicy("latest", num_versions=max(num, 1))
    if which == "all":
        return VersionPolicy("all")
    versions = tuple(sorted(set(policy.specific.versions)))
    if not versions:
        raise ModelConfigError(f"{where}: specific policy lists no versions")
    return VersionPolicy("specific", versions=versions)


def load_model_config(path: Path, models_dir: Path) -> list[ModelEntry]:
    """Parse a text-format `ModelServerConfig`; clear errors name the file and the problem."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ModelConfigError(f"{path}: cannot read the model config: {err.strerror}") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ModelConfigError(f"{path}: not a ModelServerConfig text proto: {err}") from None
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise ModelConfigError(f"{path}: model_config_list lists no models")
    entries: list[ModelEntry] = []
    for model in config.model_config_list.config:
        where = f"{path}: model {model.name!r}"
        check_model_name(model.name, str(path))
        if model.name in {e.name for e in entries}:
            raise ModelConfigError(f"{where} is listed twice")
        if not model.base_path:
            raise ModelConfigError(f"{where} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"{where}: model_platform {model.model_platform!r} unsupported")
        entries.append(
            ModelEntry(
                name=model.name,
                base_path=host_base_path(model.base_path, models_dir, path.parent),
                policy=_policy(model, where),
                labels=dict(model.version_labels),
                source=path,
            )
        )
    return entries


def check_version_labels(entries: list[ModelEntry], allow_unavailable: bool) -> None:
    """Refuse version labels at startup as TF Serving does, so one config acts alike in both.

    TF Serving checks each label against the versions AVAILABLE at that moment and refuses the
    whole config otherwise (server_core.cc:529-538, UpdateModelVersionLabelMap). It runs that
    check before it loads any model (server_core.cc:469, before AddModelsViaModelConfigList at
    :479), so at startup no version is available yet and every label is refused, unless
    --allow_version_labels_for_unavailable_models (main.cc:109), which then accepts any label
    on the first config (server_core.cc:515-526: no earlier label to conflict with). Neither
    engine here reloads its config while running, so the startup rule is the whole rule.
    """
    if allow_unavailable:
        return
    for entry in entries:
        for label, version in sorted(entry.labels.items()):
            where = entry.source if entry.source is not None else "--model-config"
            raise ModelConfigError(
                f"{where}: model {entry.name!r}, label {label!r}: Request to assign label to "
                f"version {version} of model {entry.name}, which is not currently available "
                "for inference (TF Serving checks labels before it loads any version; pass "
                "--allow-version-labels-for-unavailable-models to accept them, as TF Serving's "
                "--allow_version_labels_for_unavailable_models)"
            )


def host_config_text(entries: list[ModelEntry]) -> str:
    """The same models as a `ModelServerConfig` with absolute host paths (for the binary)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add()
        model.name = entry.name
        model.base_path = os.path.abspath(entry.base_path)
        model.model_platform = "tensorflow"
        policy = entry.policy
        if policy.kind == "all":
            model.model_version_policy.all.SetInParent()
        elif policy.kind == "specific":
            model.model_version_policy.specific.versions.extend(policy.versions)
        else:
            model.model_version_policy.latest.num_versions = policy.num_versions
        for label, version in entry.labels.items():
            model.version_labels[label] = version
    return text_format.MessageToString(config)
