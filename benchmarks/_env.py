"""Set-up every benchmark script does before TensorFlow or the project is imported.

Imported first by `benchmarks/*.py` (run as scripts, so this folder is on sys.path): the
environment must be set before TensorFlow loads, and the project root must be importable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFX/TFMA 1.16 expect Keras 2 models
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Also for Beam's multi_processing workers, which inherit the environment: google-* libraries
# warn about Python 3.10 on every import.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path(
    os.environ.get("TAILINGS_REAL_DATA", ROOT.parent / "shared" / "brazil-tailings")
)
RESULTS = ROOT / "benchmarks" / "results"
