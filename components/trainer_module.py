"""TFX Trainer module file: `Trainer(module_file=<this file>, custom_config=...)`.

Kept tiny because TFX packages the module file's folder into a wheel and imports it by
file name; the logic lives in the installed package `components.trainer_lib`.
"""

from __future__ import annotations

from typing import Any

from components import trainer_lib


def run_fn(fn_args: Any) -> None:
    """Entry point TFX calls with its `FnArgs`; see `components.trainer_lib.run_fn`."""
    trainer_lib.run_fn(fn_args)
