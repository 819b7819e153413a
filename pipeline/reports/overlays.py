"""Error maps for the run report: each evaluated tile's RGB with its wrong pixels coloured.

TFMA gives per-tile numbers but keeps no per-pixel predictions, so the report predicts the
eval tiles again with the run's own model (its `serving_default` signature, as TF Serving
would), takes the scene windows' blended predictions from the ScenePredictor's examples (what
the scene Evaluator scored), and colours false positives and false negatives over the RGB.
Drawn with numpy: one small PNG per example, ordered like the TFMA table (worst first).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence

import numpy as np

from schemas.features import MASK_NODATA

FALSE_POSITIVE = (255, 0, 255)  # magenta: predicted tailings, labelled background
FALSE_NEGATIVE = (0, 200, 255)  # cyan: labelled tailings, missed
TRUE_POSITIVE = (255, 215, 0)  # gold outline-free fill, half transparent
NODATA = (40, 40, 40)
ALPHA = 0.55
THUMBNAIL = 224  # pixels a side in the page
BATCH = 4


def error_rgb(rgb: np.ndarray, mask: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3]: `rgb` (float 0..1) with TP, FP and FN blended in; no data grey."""
    from components.metrics import THRESHOLD

    out = (np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.float32)
    valid = mask != MASK_NODATA
    truth = valid & (mask == 1)
    predicted = valid & (probabilities > THRESHOLD)
    for where, colour in (
        (truth & predicted, TRUE_POSITIVE),
        (~truth & predicted, FALSE_POSITIVE),
        (truth & ~predicted, FALSE_NEGATIVE),
    ):
        out[where] = (1.0 - ALPHA) * out[where] + ALPHA * np.asarray(colour, np.float32)
    out[~valid] = NODATA
    return out.astype(np.uint8)


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """Nearest-neighbour downsampling to at most `size` pixels a side (keeps colours exact)."""
    step = max(1, int(np.ceil(max(image.shape[:2]) / size)))
    return image[::step, ::step]


def png(image: np.ndarray) -> bytes:
    import io

    import matplotlib.image as mpimg

    buffer = io.BytesIO()
    mpimg.imsave(buffer, image, format="png")
    return buffer.getvalue()


def read_examples(examples_uri: str, split: str) -> dict[str, bytes]:
    """Serialized tf.Examples of one split of an ExampleGen artifact, by pair id."""
    import tensorflow as tf

    from data.examples import decode_arrays

    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    found = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        raw = record.numpy()
        found[decode_arrays(raw)[0]] = raw
    return found


def error_maps(
    model_dir: str, examples: dict[str, bytes], order: Sequence[str], labels: str = "site"
) -> Iterable[tuple[str, bytes]]:
    """(pair id, PNG) for every id of `order` found in `examples`, predicted in batches and
    compared with the label the Evaluator scored (`labels`: the site label or the own mask)."""
    import tensorflow as tf

    from components import trainer_lib
    from data.examples import decode_pair

    signature = tf.saved_model.load(model_dir).signatures[trainer_lib.SERVING_DEFAULT]
    ids = [pid for pid in order if pid in examples]
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        outputs = signature(
            **{trainer_lib.EXAMPLES_INPUT: tf.constant([examples[i] for i in batch])}
        )
        probabilities = outputs[trainer_lib.PROBABILITIES].numpy()[..., 0]
        for pid, prob in zip(batch, probabilities, strict=True):
            pair = decode_pair(examples[pid])
            mask = pair.site_label if labels == "site" else pair.mask
            rgb = trainer_lib.to_display_rgb(pair.image)
            yield pid, png(thumbnail(error_rgb(rgb, mask, prob)))


def blended_error_maps(
    predictions_uri: str, split: str, examples: dict[str, bytes], order: Sequence[str]
) -> Iterable[tuple[str, bytes]]:
    """(pair id, PNG) for the scene windows as the scene Evaluator scored them: the
    ScenePredictor's blended prediction and label (`components.scene_predictor_lib`), over
    the window's pixels from ExampleGen; no model runs."""
    import tensorflow as tf

    from components import scene_predictor_lib as lib
    from components import trainer_lib
    from data.examples import decode_arrays

    files = sorted(glob.glob(os.path.join(predictions_uri, f"Split-{split}", "*")))
    scored = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        scored[feature["pair_id"].bytes_list.value[0].decode()] = feature
    for pid in order:
        if pid not in scored or pid not in examples:
            continue
        _, image, _ = decode_arrays(examples[pid])
        shape = image.shape[:2]
        label = np.asarray(scored[pid][lib.LABEL].float_list.value).reshape(shape)
        prob = np.asarray(scored[pid][lib.PREDICTION].float_list.value).reshape(shape)
        rgb = trainer_lib.to_display_rgb(image)
        yield pid, png(thumbnail(error_rgb(rgb, label.astype(np.uint8), prob)))
