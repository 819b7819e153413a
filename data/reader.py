"""Read converted shards back as a `tf.data.Dataset` of (image, mask)."""

from __future__ import annotations

from pathlib import Path

from schemas import features as F


def shard_files(path: str | Path) -> list[str]:
    """The TFRecord shards in a conversion folder (or one file), sorted."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.glob("*.tfrecord.gz"))
    if not files:
        raise FileNotFoundError(f"no *.tfrecord.gz shards in {path}")
    return files


def parse_pair(serialized):
    """One serialized Example -> (image float32 H x W x bands, mask uint8 H x W)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, F.feature_spec())
    height, width = parsed[F.HEIGHT], parsed[F.WIDTH]
    image = tf.io.decode_raw(parsed[F.IMAGE], tf.float32, little_endian=True)
    mask = tf.io.decode_raw(parsed[F.MASK], tf.uint8)
    image = tf.reshape(image, tf.stack([height, width, parsed[F.BANDS]]))
    mask = tf.reshape(mask, tf.stack([height, width]))
    return image, mask


def read_dataset(path: str | Path, with_ids: bool = False):
    """A dataset of (image, mask), or (pair_id, image, mask) with `with_ids`, in shard order."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(shard_files(path), compression_type="GZIP")
    if not with_ids:
        return ds.map(parse_pair)

    def with_id(serialized):
        pair_id = tf.io.parse_single_example(
            serialized, {F.PAIR_ID: tf.io.FixedLenFeature([], tf.string)}
        )[F.PAIR_ID]
        image, mask = parse_pair(serialized)
        return pair_id, image, mask

    return ds.map(with_id)
