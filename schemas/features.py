"""The one definition of the tf.Example written by conversion and read by every consumer.

Writer (`data.convert`), readers (`data.reader`), Transform and the serving signatures all
import these names and the parsing spec from here, so a feature cannot drift between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow is imported lazily: the CLI and Beam planning stay fast.
    import tensorflow as tf

# Identity and raw pixels.
PAIR_ID = "pair_id"
IMAGE = "image"  # little-endian float32 bytes, H x W x BANDS, in the file's band order
MASK = "mask"  # raw uint8 bytes, H x W, values 0 (background) / 1 (tailings): the tile's own
# The place the tile shows (`data.sites`): `site-<first pair id>`; TFMA slices by it.
SITE_ID = "site_id"
# The site label: the union of the masks of the tile's site on the tile's own grid, as MASK.
SITE_MASK = "site_mask"
# Mask value for pixels with no data (only in scene windows, where no tile lies): metrics skip
# them; `tailings convert` refuses masks with any value but 0/1.
MASK_NODATA = 255
HEIGHT = "height"
WIDTH = "width"
BANDS = "bands"
BAND_NAMES = "band_names"

# Georeference: enough to write a prediction back onto the same grid.
CRS_WKT = "crs_wkt"
EPSG = "epsg"  # 0 when the CRS has no EPSG code
TRANSFORM = "transform"  # affine a, b, c, d, e, f (rasterio order)

# Per-image summary features: what TFDV computes statistics over and the schema constrains.
# The vectors hold one value per band; TFDV pools a multi-value feature into one distribution
# (B2, B3 and B4 mixed), so each band also gets its own scalar feature, e.g. band_mean_b4, with
# its own statistics, histogram and drift comparator in the curated schema.
BAND_MEAN = "band_mean"
BAND_STD = "band_std"
BAND_MIN = "band_min"
BAND_MAX = "band_max"
TAILINGS_FRACTION = "tailings_fraction"

IMAGE_DTYPE = "<f4"
MASK_DTYPE = "u1"
EXPECTED_BANDS = 3
BAND_ORDER = ("B2", "B3", "B4")  # blue, green, red: the file's order, which the schema checks

BAND_STATISTICS = (BAND_MEAN, BAND_STD, BAND_MIN, BAND_MAX)


def band_feature(statistic: str, band: str) -> str:
    """The scalar feature of one band's statistic: ("band_mean", "B4") -> "band_mean_b4"."""
    return f"{statistic}_{band.lower()}"


PER_BAND_FEATURES = tuple(band_feature(s, b) for s in BAND_STATISTICS for b in BAND_ORDER)
SUMMARY_FEATURES = (*BAND_STATISTICS, TAILINGS_FRACTION)
# What the curated schema compares between datasets (drift) and between splits (skew).
COMPARED_FEATURES = (*PER_BAND_FEATURES, TAILINGS_FRACTION)
BYTES_FEATURES = (IMAGE, MASK, SITE_MASK)


def feature_spec(bands: int = EXPECTED_BANDS) -> dict[str, tf.io.FixedLenFeature]:
    """Parsing spec for `tf.io.parse_example`; matches what `data.convert` writes."""
    import tensorflow as tf

    return {
        PAIR_ID: tf.io.FixedLenFeature([], tf.string),
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        MASK: tf.io.FixedLenFeature([], tf.string),
        SITE_ID: tf.io.FixedLenFeature([], tf.string),
        SITE_MASK: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        BANDS: tf.io.FixedLenFeature([], tf.int64),
        BAND_NAMES: tf.io.FixedLenFeature([bands], tf.string),
        CRS_WKT: tf.io.FixedLenFeature([], tf.string),
        EPSG: tf.io.FixedLenFeature([], tf.int64),
        TRANSFORM: tf.io.FixedLenFeature([6], tf.float32),
        BAND_MEAN: tf.io.FixedLenFeature([bands], tf.float32),
        BAND_STD: tf.io.FixedLenFeature([bands], tf.float32),
        BAND_MIN: tf.io.FixedLenFeature([bands], tf.float32),
        BAND_MAX: tf.io.FixedLenFeature([bands], tf.float32),
        TAILINGS_FRACTION: tf.io.FixedLenFeature([], tf.float32),
        **{name: tf.io.FixedLenFeature([], tf.float32) for name in PER_BAND_FEATURES},
    }
