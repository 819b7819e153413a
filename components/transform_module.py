"""TFX Transform module file: `Transform(module_file=<this file>, custom_config=...)`.

Kept tiny because TFX packages the module file's folder into a wheel and imports it by
file name; the logic lives in the installed package `components.transform_lib`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from components import transform_lib


def preprocessing_fn(
    inputs: dict[str, Any], custom_config: dict[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """Entry point TFX calls; see `components.transform_lib.preprocessing_fn`."""
    return transform_lib.preprocessing_fn(inputs, custom_config)
