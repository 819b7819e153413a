"""The real TF Serving: run `tensorflow_model_server` on the same models, or say how to get it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from serving.config import METRICS_PATH, TFSERVING_IMAGE, TFServingConfig
from serving.model_config import ModelEntry, host_config_text

MONITORING_TEXT = f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'


class TFServingNotFound(RuntimeError):
    """`tensorflow_model_server` is not on PATH; the message says how to get it."""


def missing_message(binary: str) -> str:
    return (
        f"`{binary}` is not on PATH, so --engine tfserving cannot start TF Serving. "
        f"Get it one of these ways: (1) Docker: `docker compose -f serving/compose.yaml up` "
        f"runs the official image {TFSERVING_IMAGE} on the same models and config; "
        "(2) Debian/Ubuntu: add the TF Serving apt repository "
        "(https://www.tensorflow.org/tfx/serving/setup#installing_using_apt) and "
        "`apt-get install tensorflow-model-server`; then re-run this command. "
        "Or use the embedded server, which speaks the same REST API: `tailings serve` "
        "(--engine embedded, the default)."
    )


def find_binary(cfg: TFServingConfig) -> str:
    path = shutil.which(cfg.binary)
    if path is None:
        raise TFServingNotFound(missing_message(cfg.binary))
    return path


def command(binary: str, cfg: TFServingConfig, config_file: Path, monitoring_file: Path) -> list:
    """`tensorflow_model_server` flags equivalent to the embedded server's behaviour."""
    return [
        binary,
        f"--port={cfg.grpc_port}",
        f"--rest_api_port={cfg.rest_port}",
        f"--model_config_file={config_file}",
        f"--model_config_file_poll_wait_seconds={cfg.config_poll_seconds}",
        f"--file_system_poll_wait_seconds={cfg.poll_seconds}",
        f"--enable_model_warmup={'true' if cfg.enable_warmup else 'false'}",
        f"--monitoring_config_file={monitoring_file}",
        f"--max_num_load_retries={cfg.load_retries}",
        f"--load_retry_interval_micros={round(cfg.load_retry_seconds * 1e6)}",
        f"--allow_version_labels_for_unavailable_models={str(cfg.allow_unavailable_labels).lower()}",
        f"--rest_api_enable_cors_support={str(cfg.enable_cors).lower()}",
    ]


def run_tfserving(
    entries: list[ModelEntry], cfg: TFServingConfig, say: Callable[[str], None]
) -> int:
    """Run TF Serving in the foreground until it exits or is interrupted; its exit code."""
    binary = find_binary(cfg)
    with tempfile.TemporaryDirectory(prefix="tailings-tfserving-") as tmp:
        config_file = Path(tmp) / "models.config"
        config_file.write_text(host_config_text(entries))
        monitoring_file = Path(tmp) / "monitoring.config"
        monitoring_file.write_text(MONITORING_TEXT)
        argv = command(binary, cfg, config_file, monitoring_file)
        say("running: " + " ".join(argv))
        say(
            f"TF Serving listens on all interfaces: gRPC :{cfg.grpc_port}, "
            f"REST :{cfg.rest_port} (it has no bind-address flag)"
        )
        process = subprocess.Popen(argv)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait()
