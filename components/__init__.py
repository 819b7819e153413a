"""TFX module code for tailings segmentation: configs, U-Net, metrics, Transform and Trainer.

TFX 1.16 / TFMA 0.47 need Keras-2 SavedModels, so ask TensorFlow for legacy Keras (tf_keras)
in case nothing set it yet; the modules below import `tf_keras` directly either way.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def __getattr__(name: str):
    """`components.ConversionReport`, loaded on first use: the artifact type's name is its
    import path, which TFX's Kubeflow V2 container entrypoint imports (see
    `components.example_gen.ConversionReport`); importing `components` stays light."""
    if name == "ConversionReport":
        from components.example_gen import ConversionReport

        return ConversionReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
