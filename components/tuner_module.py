"""TFX Tuner module file: `Tuner(module_file=<this file>, custom_config=...)`.

Kept tiny because TFX packages the module file's folder into a wheel and imports it by
file name; the logic lives in the installed package `components.tuner_lib`.
"""

from __future__ import annotations

from typing import Any

from components import tuner_lib


def tuner_fn(fn_args: Any) -> Any:
    """Entry point TFX calls with its `FnArgs`; see `components.tuner_lib.tuner_fn`."""
    return tuner_lib.tuner_fn(fn_args)
