"""Encode a validated pair as a `tf.train.Example` and decode it back.

Both directions live here, next to `schemas.features`, so the byte layout (little-endian
float32 H x W x bands; uint8 mask) is written and read by the same code.
"""

from __future__ import annotations

import numpy as np

from data.pairs import GeoPair
from schemas import features as F


def summary(pair: GeoPair) -> dict[str, list[float] | float]:
    """Per-image statistics that TFDV summarises and the schema constrains (`summary_values`)."""
    return summary_values(pair.image, pair.mask)


def summary_values(image: np.ndarray, mask: np.ndarray) -> dict[str, list[float] | float]:
    """Every summary feature of an H x W x bands image and its H x W mask, by feature name.

    Over the pixels with data: a scene window's no-data cells (mask `MASK_NODATA`) are left out.
    The band vectors (`band_mean`: one value per band) and, for TFDV to summarise each band on
    its own, one scalar per band (`band_mean_b2`, ...). A wrong band count is left to the
    schema to report (`bands`, missing band features).
    """
    valid = (mask != F.MASK_NODATA).reshape(-1)
    pixels = image.reshape(-1, image.shape[-1])[valid].astype(np.float64)
    labels = mask.reshape(-1)[valid]
    vectors = {
        F.BAND_MEAN: pixels.mean(axis=0).tolist(),
        F.BAND_STD: pixels.std(axis=0).tolist(),
        F.BAND_MIN: pixels.min(axis=0).tolist(),
        F.BAND_MAX: pixels.max(axis=0).tolist(),
    }
    per_band = {
        F.band_feature(name, band): value
        for name, values in vectors.items()
        for band, value in zip(F.BAND_ORDER, values, strict=False)
    }
    return {
        **vectors,
        F.TAILINGS_FRACTION: float(labels.mean()) if labels.size else 0.0,
        **per_band,
    }


def to_example(pair: GeoPair):
    """The tf.Example of one pair, with every feature of `schemas.features.feature_spec`."""
    import tensorflow as tf

    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def f(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    height, width, bands = pair.image.shape
    stats = summary(pair)
    feature = {
        F.PAIR_ID: b([pair.pair_id.encode()]),
        F.IMAGE: b([pair.image.astype(F.IMAGE_DTYPE, copy=False).tobytes()]),
        F.MASK: b([pair.mask.astype(F.MASK_DTYPE, copy=False).tobytes()]),
        F.SITE_ID: b([pair.site.encode()]),
        F.SITE_MASK: b([pair.site_label.astype(F.MASK_DTYPE, copy=False).tobytes()]),
        F.HEIGHT: i([height]),
        F.WIDTH: i([width]),
        F.BANDS: i([bands]),
        F.BAND_NAMES: b([n.encode() for n in pair.band_names]),
        F.CRS_WKT: b([pair.crs_wkt.encode()]),
        F.EPSG: i([pair.epsg]),
        F.TRANSFORM: f(list(pair.transform)),
        F.BAND_MEAN: f(stats[F.BAND_MEAN]),
        F.BAND_STD: f(stats[F.BAND_STD]),
        F.BAND_MIN: f(stats[F.BAND_MIN]),
        F.BAND_MAX: f(stats[F.BAND_MAX]),
        F.TAILINGS_FRACTION: f([stats[F.TAILINGS_FRACTION]]),
        **{name: f([stats[name]]) for name in F.PER_BAND_FEATURES if name in stats},
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_arrays(serialized: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """(pair id, image H x W x bands float32, mask H x W uint8) from one serialized Example."""
    import tensorflow as tf

    return _arrays(tf.train.Example.FromString(serialized).features.feature)


def decode_pair(serialized: bytes) -> GeoPair:
    """The GeoPair (pixels and georeference) of one serialized Example: `to_example` inverted.
    The affine transform comes back as the float32 the Example stores it in."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized).features.feature
    pair_id, image, mask = _arrays(ex)
    height, width = mask.shape
    site_mask = None
    if F.SITE_MASK in ex:  # examples written before sites have none: the own mask stands in
        raw = np.frombuffer(ex[F.SITE_MASK].bytes_list.value[0], dtype=F.MASK_DTYPE)
        site_mask = raw.reshape(height, width)
    return GeoPair(
        pair_id=pair_id,
        image=image,
        mask=mask,
        band_names=tuple(v.decode() for v in ex[F.BAND_NAMES].bytes_list.value),
        crs_wkt=ex[F.CRS_WKT].bytes_list.value[0].decode(),
        epsg=int(ex[F.EPSG].int64_list.value[0]),
        transform=tuple(float(v) for v in ex[F.TRANSFORM].float_list.value),
        site_id=ex[F.SITE_ID].bytes_list.value[0].decode() if F.SITE_ID in ex else "",
        site_mask=site_mask,
    )


def _arrays(ex) -> tuple[str, np.ndarray, np.ndarray]:  # noqa: ANN001 (a proto feature map)
    height = ex[F.HEIGHT].int64_list.value[0]
    width = ex[F.WIDTH].int64_list.value[0]
    bands = ex[F.BANDS].int64_list.value[0]
    image = np.frombuffer(ex[F.IMAGE].bytes_list.value[0], dtype=F.IMAGE_DTYPE)
    mask = np.frombuffer(ex[F.MASK].bytes_list.value[0], dtype=F.MASK_DTYPE)
    return (
        ex[F.PAIR_ID].bytes_list.value[0].decode(),
        image.reshape(height, width, bands),
        mask.reshape(height, width),
    )
