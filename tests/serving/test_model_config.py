"""The model config shared by both engines, the compose file, and the TF Serving command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import (
    CONTAINER_MODELS_DIR,
    METRICS_PATH,
    MODEL_CONFIG,
    MONITORING_CONFIG,
    TFSERVING_IMAGE,
    TFServingConfig,
)
from serving.model_config import (
    ModelConfigError,
    VersionPolicy,
    check_version_labels,
    host_config_text,
    load_model_config,
    single_model,
)
from serving.tfserving import MONITORING_TEXT, TFServingNotFound, command, find_binary
from tests.conftest import PROJECT_ROOT
from tests.serving.conftest import write_models_config

SERVING = PROJECT_ROOT / "serving"


def test_committed_config_serves_the_pushed_folder_on_both_engines(tmp_path):
    (entry,) = load_model_config(PROJECT_ROOT / MODEL_CONFIG, models_dir=tmp_path / "models")
    assert entry.name == "tailings"
    assert entry.base_path == tmp_path / "models" / "tailings"  # /models/tailings on the host
    assert entry.policy == VersionPolicy("latest", num_versions=1)


def test_compose_mounts_what_the_config_names():
    compose = yaml.safe_load((SERVING / "compose.yaml").read_text())
    service = compose["services"]["tfserving"]
    assert service["image"] == TFSERVING_IMAGE
    assert "127.0.0.1:8500:8500" in service["ports"] and "127.0.0.1:8501:8501" in service["ports"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in service["volumes"])
    assert mounts["./models"] == str(CONTAINER_MODELS_DIR)
    flags = dict(arg.lstrip("-").split("=", 1) for arg in service["command"])
    assert mounts["./models.config"] == flags["model_config_file"]
    assert mounts["./monitoring.config"] == flags["monitoring_config_file"]
    for local in mounts:
        assert (SERVING / local).exists() or local == "./models"
    assert f'path: "{METRICS_PATH}"' in (PROJECT_ROOT / MONITORING_CONFIG).read_text()
    assert f'path: "{METRICS_PATH}"' in MONITORING_TEXT


def test_policies_pick_versions_like_tf_serving():
    on_disk = [1, 2, 3, 10]
    assert VersionPolicy().select(on_disk) == [10]
    assert VersionPolicy("latest", num_versions=2).select(on_disk) == [10, 3]
    assert VersionPolicy("all").select(on_disk) == [10, 3, 2, 1]
    assert VersionPolicy("specific", versions=(2, 7)).select(on_disk) == [2]


def test_policies_and_labels_are_read_and_written_back(tmp_path):
    extra = (
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        '    version_labels { key: "stable" value: 1 }\n'
        '    version_labels { key: "canary" value: 2 }\n'
    )
    config = write_models_config(tmp_path / "m.config", "tailings", Path("relative/dir"), extra)
    (entry,) = load_model_config(config, models_dir=tmp_path / "unused")
    assert entry.base_path == tmp_path / "relative" / "dir"  # relative to the config file
    assert entry.policy == VersionPolicy("specific", versions=(1, 2))
    assert entry.labels == {"stable": 1, "canary": 2}
    rewritten = tmp_path / "host.config"
    rewritten.write_text(host_config_text([entry]))
    (again,) = load_model_config(rewritten, models_dir=tmp_path / "unused")
    assert again == entry
    assert f'base_path: "{tmp_path / "relative" / "dir"}"' in rewritten.read_text()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model_config_list { config { name: ", "not a ModelServerConfig text proto"),
        ("", "lists no models"),
        ('model_config_list { config { name: "a/b" base_path: "/x" } }', "model name 'a/b'"),
        ('model_config_list { config { name: "m" } }', "has no base_path"),
        (
            'model_config_list { config { name: "m" base_path: "/x" } '
            'config { name: "m" base_path: "/y" } }',
            "listed twice",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/x" '
            "model_version_policy { specific { } } } }",
            "specific policy lists no versions",
        ),
    ],
)
def test_bad_configs_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(ModelConfigError) as err:
        load_model_config(path, models_dir=tmp_path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_version_labels_are_refused_at_startup_as_tf_serving_refuses_them(tmp_path):
    """Issue 16, 3: TF Serving checks labels before it loads any version (server_core.cc:469,
    529-538), so a config with labels starts only with
    --allow_version_labels_for_unavailable_models; both engines now say so alike."""
    extra = '    version_labels { key: "stable" value: 1 }\n'
    config = write_models_config(tmp_path / "m.config", "tailings", tmp_path / "m", extra)
    entries = load_model_config(config, models_dir=tmp_path)
    with pytest.raises(ModelConfigError) as err:
        check_version_labels(entries, allow_unavailable=False)
    message = str(err.value)
    assert message.startswith(
        f"{config}: model 'tailings', label 'stable': Request to assign label to version 1 of "
        "model tailings, which is not currently available for inference"
    )
    assert "--allow-version-labels-for-unavailable-models" in message and "\n" not in message
    check_version_labels(entries, allow_unavailable=True)  # the flag accepts any label
    check_version_labels([single_model(tmp_path, "m")], allow_unavailable=False)  # no labels


def test_missing_config_and_bad_model_name_are_errors(tmp_path):
    with pytest.raises(ModelConfigError, match="cannot read the model config"):
        load_model_config(tmp_path / "nope.config", models_dir=tmp_path)
    with pytest.raises(ModelConfigError, match="--model-name: model name '../x'"):
        single_model(tmp_path, "../x")


def test_tfserving_command_and_missing_binary(tmp_path):
    cfg = TFServingConfig(binary="tensorflow_model_server_not_installed_here")
    with pytest.raises(TFServingNotFound) as err:
        find_binary(cfg)
    message = str(err.value)
    for hint in ("not on PATH", "docker compose -f serving/compose.yaml up", TFSERVING_IMAGE,
                 "apt-get install tensorflow-model-server", "tailings serve"):  # fmt: skip
        assert hint in message
    argv = command("/bin/tms", TFServingConfig(), tmp_path / "m.config", tmp_path / "mon.config")
    assert argv[0] == "/bin/tms"
    assert "--rest_api_port=8501" in argv and "--port=8500" in argv
    assert f"--model_config_file={tmp_path / 'm.config'}" in argv
    assert "--file_system_poll_wait_seconds=1" in argv and "--enable_model_warmup=true" in argv
    # the embedded server's behaviour flags, under TF Serving's names and with its defaults
    assert "--max_num_load_retries=5" in argv and "--load_retry_interval_micros=60000000" in argv
    assert "--allow_version_labels_for_unavailable_models=false" in argv
    labelled = TFServingConfig(allow_unavailable_labels=True, enable_cors=True)
    argv = command("/bin/tms", labelled, tmp_path / "m.config", tmp_path / "mon.config")
    assert "--allow_version_labels_for_unavailable_models=true" in argv
    assert "--rest_api_enable_cors_support=true" in argv
