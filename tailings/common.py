"""What every `tailings` verb shares: exit codes, the error type, progress output, env setup."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# TFX/TFMA 1.16 need Keras-2 SavedModels; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Google client libraries warn about Python 3.10 on import; TFX 1.16 cannot run on newer Python.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
# Library chatter that says nothing to a user of the command line (full logs: `run` log files).
logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)
logging.getLogger("tensorflow").setLevel(logging.ERROR)

EXIT_OK = 0
EXIT_FAILED = 1


class CliError(Exception):
    """A user-facing failure: printed as one line to stderr, exit code EXIT_FAILED."""


def say(message: str) -> None:
    """Progress and results go to stderr, so stdout stays clean for piping."""
    print(message, file=sys.stderr, flush=True)
