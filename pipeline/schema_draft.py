"""`tailings schema infer`: a TFDV-inferred schema draft to review against the curated one.

The curated `schemas/schema.pbtxt` is the contract; inference only proposes. The draft is
written next to it so a reviewer can diff the two and copy over what the data justifies.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import PipelineConfig
from schemas import features as F

DRAFT_NAME = "schema.draft.pbtxt"
STATS_FILE = "FeatureStats.pb"
TRAIN_SPLIT = "train"


def statistics_from_run(cfg: PipelineConfig, run_id: str | None = None):
    """The train split's statistics from a run's StatisticsGen artifact."""
    import tensorflow_data_validation as tfdv

    from pipeline import metadata, nodes

    run = metadata.load_run(metadata.open_store(str(cfg.metadata_path), verify=True), run_id)
    artifact = run.artifact(nodes.STATISTICS_GEN, nodes.STATISTICS) if run else None
    if artifact is None:
        raise FileNotFoundError(f"no StatisticsGen output in run {run_id or 'latest'}")
    return tfdv.load_stats_binary(os.path.join(artifact.uri, f"Split-{TRAIN_SPLIT}", STATS_FILE))


def statistics_from_examples(folder: str | Path, schema=None):
    """Statistics of a folder of converted TFRecords (works before any pipeline run).

    `schema` only tells TFDV how to treat features (pixel bytes as images); without one, a
    minimal schema that says just that is used.
    """
    import tensorflow_data_validation as tfdv

    from data.reader import shard_files

    shard_files(folder)  # a clear error when the folder holds no shards
    return tfdv.generate_statistics_from_tfrecord(
        data_location=str(Path(folder) / "*.tfrecord.gz"),
        stats_options=tfdv.StatsOptions(schema=schema or _bytes_as_images()),
    )


def _bytes_as_images():
    """A minimal schema that marks the pixel bytes as images, so TFDV skips text statistics."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for name in F.BYTES_FEATURES:
        feature = schema.feature.add(name=name, type=schema_pb2.BYTES)
        feature.image_domain.SetInParent()
    return schema


def infer_draft(statistics):
    """Inferred schema with the pixel bytes marked as images, as in the curated schema."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(statistics, infer_feature_shape=True)
    for feature in schema.feature:
        if feature.name in F.BYTES_FEATURES:
            feature.ClearField("domain")
            feature.image_domain.SetInParent()
    return schema


def write_draft(statistics, out: Path) -> Path:
    import tensorflow_data_validation as tfdv

    out.parent.mkdir(parents=True, exist_ok=True)
    tfdv.write_schema_text(infer_draft(statistics), str(out))
    return out
