"""TFX module code for tailings segmentation: configs, U-Net, metrics, Transform and Trainer.

TFX 1.16 / TFMA 0.47 need Keras-2 SavedModels, so ask TensorFlow for legacy Keras (tf_keras)
in case nothing set it yet; the modules below import `tf_keras` directly either way.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
