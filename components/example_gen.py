"""GeoTiffExampleGen: the Beam GeoTIFF conversion as a TFX ExampleGen.

TFX's file-based ExampleGens read one record per input row; a GeoTIFF pair is two files that
must be validated together, and bad pairs must be reported, not dropped. So this component runs
`data.convert.convert_pairs` inside TFX's Beam pipeline and publishes two artifacts: standard
`Examples` (split by a hash of the site id, readable by every TFX component) and a
`ConversionReport` (rejected.jsonl, summary.json, sites.jsonl) so the rejected pairs and the
sites are tracked in ML Metadata next to the data. Tiles are grouped into sites (`data.sites`)
from their headers before any pixel is read; a site's tiles share one split, and each example
carries its site id and its site label (the union of its site's masks) beside its own mask.
Pairs excluded in the data folder's `labels.yaml` (see `data.labels`) are rejected with reason
`excluded_by_review`, so they reach no split (the scene split included) and their masks join
no site label; the file is part of the input fingerprint, so editing it invalidates TFX's
cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from data import scenes
from data.config import PairingConfig, SceneConfig, SplitConfig, ValidationConfig
from data.convert import (
    ConversionError,
    ShardPlan,
    convert_pairs,
    sites_file_beside,
    summarize,
    with_sites,
)
from data.labels import (
    LABELS_FILE,
    LabelsFileError,
    is_uri,
    labels_path,
    labels_uri,
    load_exclusions,
)
from data.pairs import PairSpec, discover_pairs, list_objects
from schemas import features

EXAMPLES_KEY = "examples"
REPORT_KEY = "conversion_report"
REJECTED_FILE = "rejected.jsonl"
SUMMARY_FILE = "summary.json"
SCENE_LAYOUT_FILE = "scene_layout.json"
# TFX's own layout, so TFXIO, StatisticsGen and Transform read the splits without help.
SHARD_PATTERN = "Split-{split}/data_tfrecord-{shard:05d}-of-{shards:05d}.gz"


class ConversionReport(types.Artifact):
    """rejected.jsonl (one line per rejected pair, with its reason), summary.json,
    sites.jsonl (one line per site: its tiles, extent, split and label agreement) and
    scene_layout.json (the scene split's sites, their tiles and window offsets).

    Named by an import path of the class, `components.ConversionReport`: in a compiled
    pipeline (`tailings compile`) TFX's container entrypoint imports a custom artifact type by
    its name (`_retrieve_class_path` in tfx/orchestration/kubeflow/v2/container/
    kubeflow_v2_entrypoint_utils.py: "for custom types, the import path is encoded as the
    schema title"), and TFX's KFP compiler takes only `<namespace>.<Title>` names (one dot,
    `_SCHEMA_TITLE_RE` in its compiler_utils.py). ML Metadata stores written before hold the
    older names `ConversionReport` and `tailings.ConversionReport`; their runs still list and
    report (the readers go by node and output key, never by type name), and the first run on
    such a store misses TFX's cache once (the output type is part of the key)."""

    TYPE_NAME = "components.ConversionReport"


def input_fingerprint(
    input_base: str, cfg: PairingConfig = PairingConfig(), list_data: bool = True
) -> str:
    """Names, sizes and modification times of every input raster, the content of
    `labels.yaml` when there is one, and the names of the features an example carries.

    Passed as an execution property so TFX's cache sees changed input files; without it a
    re-run over edited data (or edited review decisions) would reuse the old examples, and an
    output folder made before a feature was added (the per-band statistics) would keep
    examples without it.
    Anything that is not a regular file (a folder, a dangling symlink) is skipped, as
    `discover_pairs` skips it.

    An object store `input_base` (gs://...) is fingerprinted from one listing of its objects
    (`data.pairs.list_objects`: name, size and last update time, which a rewritten object
    changes: it is a new generation) and the bytes of its `labels.yaml`; no raster is read.
    """
    digest = hashlib.sha256()
    digest.update(("features:" + ",".join(sorted(features.feature_spec())) + "\n").encode())
    if not list_data:  # compiled offline (`GeoTiffExampleGen(offline=True)`)
        return digest.hexdigest()
    if is_uri(input_base):
        for sub in ("img", "mask"):
            folder = FileSystems.join(input_base, sub)
            for uri, size, updated in list_objects(folder, cfg):
                name = uri.rsplit("/", 1)[-1]
                digest.update(f"{sub}/{name}:{size}:{updated!r}\n".encode())
        labels = labels_uri(input_base)
        if FileSystems.exists(labels):
            with FileSystems.open(labels, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                content = hashlib.sha256(fh.read()).hexdigest()
            digest.update(f"{LABELS_FILE}:{content}\n".encode())
        return digest.hexdigest()
    for sub in ("img", "mask"):
        folder = os.path.join(input_base, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in cfg.extensions and os.path.isfile(path):
                st = os.stat(path)
                digest.update(f"{sub}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    labels = labels_path(input_base)
    if labels.is_file():
        content = hashlib.sha256(labels.read_bytes()).hexdigest()
        digest.update(f"{LABELS_FILE}:{content}\n".encode())
    return digest.hexdigest()


class GeoTiffExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "input_base": ExecutionParameter(type=str),
        "input_fingerprint": ExecutionParameter(type=str),
        "splits": ExecutionParameter(type=str),  # JSON [[name, hash buckets], ...]
        "scene": ExecutionParameter(type=str),  # JSON of SceneConfig
        "shards": ExecutionParameter(type=int),
        # The tile size the pipeline trains on; 0 accepts any (a pair of another size is
        # rejected with reason `tile_size`, not left for Transform to fail on).
        "tile_size": ExecutionParameter(type=int),
    }
    INPUTS: dict[str, Any] = {}
    OUTPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        REPORT_KEY: ChannelParameter(type=ConversionReport),
    }


class Executor(base_beam_executor.BaseBeamExecutor):
    """Validate and convert the pairs under `input_base/img` and `input_base/mask`."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        start = time.monotonic()
        input_base = exec_properties["input_base"]
        splits = tuple((name, int(size)) for name, size in json.loads(exec_properties["splits"]))
        plan = ShardPlan(
            shards=int(exec_properties["shards"]), splits=splits, file_pattern=SHARD_PATTERN
        )
        tile_size = int(exec_properties.get("tile_size") or 0)
        validation = ValidationConfig(tile_size=tile_size or None)
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        report = artifact_utils.get_single_instance(output_dict[REPORT_KEY])
        specs = discover_pairs(
            FileSystems.join(input_base, "img"),
            FileSystems.join(input_base, "mask"),
            PairingConfig(),
        )
        if not specs:
            raise ConversionError(f"no image/mask GeoTIFFs under {input_base}/img and /mask")
        try:
            excluded = load_exclusions(input_base, known_ids={s.pair_id for s in specs})
        except LabelsFileError as err:
            raise ConversionError(str(err)) from err
        plan, sites = with_sites(plan, specs)
        fileio.makedirs(report.uri)
        rejected_path = FileSystems.join(report.uri, REJECTED_FILE)
        sites_path = sites_file_beside(rejected_path)  # report.uri/sites.jsonl
        with self._make_beam_pipeline() as p:
            convert_pairs(p, specs, examples.uri, plan, validation, rejected_path, excluded)
        summary = summarize(
            p.result,
            specs,
            plan,
            examples.uri,
            rejected_path,
            FileSystems.join(report.uri, SUMMARY_FILE),
            time.monotonic() - start,
            workers=1,
            sites=sites,
        )
        empty = [name for name, count in summary.converted_by_split.items() if count == 0]
        if empty:
            raise ConversionError(
                f"split(s) {', '.join(empty)} got no pairs: {summary.converted} converted pairs "
                f"are too few for splits {dict(splits)}; add data or change the split"
            )
        scene_cfg = SceneConfig(**json.loads(exec_properties["scene"]))
        layout, windows = self._scene_split(
            specs, plan, sites_path, examples.uri, scene_cfg, validation
        )
        with fileio.open(FileSystems.join(report.uri, SCENE_LAYOUT_FILE), "w") as fh:
            json.dump(layout, fh, indent=1)
        names = [name for name, _ in splits] + [scene_cfg.name]
        examples.split_names = artifact_utils.encode_split_names(names)
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        for artifact in (examples, report):
            artifact.set_int_custom_property("scene_windows", windows)
            artifact.set_int_custom_property("converted", summary.converted)
            artifact.set_int_custom_property("rejected", summary.rejected)
            artifact.set_int_custom_property("pairs_found", summary.pairs_found)
            artifact.set_int_custom_property("sites", summary.sites)

    def _scene_split(
        self,
        specs: list[PairSpec],
        plan: ShardPlan,
        sites_path: str,
        uri: str,
        cfg: SceneConfig,
        validation: ValidationConfig,
    ) -> tuple[dict, int]:
        """Write the `scene` split (see `data.scenes`) from the converted tiles of the source
        split's sites; return its layout and number of windows."""
        import rasterio

        with fileio.open(sites_path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        chosen = {
            r["site"]: r["converted"]
            for r in rows
            if r["converted"] and r["split"] == cfg.source_split
        }
        converted = {pid for ids in chosen.values() for pid in ids}
        first = next(s for s in specs if s.pair_id in converted)
        with rasterio.open(first.image) as src:
            size = src.height
        site_scenes = scenes.plan_site_scenes(chosen, size, cfg)

        def shard_path(index: int, count: int) -> str:
            return FileSystems.join(
                uri, SHARD_PATTERN.format(split=cfg.name, shard=index, shards=count)
            )

        with self._make_beam_pipeline() as p:
            scenes.write_scene_split(
                p,
                site_scenes,
                [s for s in specs if s.pair_id in converted],
                shard_path,
                validation,
                size,
            )
        return scenes.layout(site_scenes, size, cfg), scenes.windows_written(p.result)


class GeoTiffExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen for folders of Sentinel-2 GeoTIFF image/mask pairs (`img/`, `mask/`).

    A `labels.yaml` beside them is checked when the component is built, so a typo in it stops
    the run before the pipeline starts (`data.labels.LabelsFileError`).
    """

    SPEC_CLASS = GeoTiffExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        input_base: str,
        config: SplitConfig = SplitConfig(),
        tile_size: int | None = None,
        offline: bool = False,
    ) -> None:
        """`offline`: the pipeline is being compiled (`tailings compile`), possibly where its
        bucket cannot be reached: the data are neither listed nor checked, and the fingerprint
        holds only the features, as it did for every compiled pipeline before buckets were
        listed (so a compiled spec's ExampleGen does not see changed data: issue 32 is open)."""
        if "://" not in input_base:  # gs://... (a compiled pipeline's data) stays a URI
            input_base = os.path.abspath(input_base)
        if not offline:
            _check_labels(input_base)
        super().__init__(
            spec=GeoTiffExampleGenSpec(
                input_base=input_base,
                input_fingerprint=input_fingerprint(input_base, list_data=not offline),
                splits=json.dumps([list(s) for s in config.splits]),
                scene=json.dumps(dataclasses.asdict(config.scene), sort_keys=True),
                shards=config.shards,
                tile_size=tile_size or 0,
                examples=types.Channel(type=standard_artifacts.Examples),
                conversion_report=types.Channel(type=ConversionReport),
            )
        )


def _check_labels(input_base: str) -> None:
    """Raise `LabelsFileError` for a bad `labels.yaml`; its ids are checked against the pairs
    on disk when `img/` and `mask/` exist (listing two folders, nothing read)."""
    if is_uri(input_base):
        if FileSystems.exists(labels_uri(input_base)):
            images, masks = (FileSystems.join(input_base, sub) for sub in ("img", "mask"))
            try:
                known = {s.pair_id for s in discover_pairs(images, masks, PairingConfig())}
            except FileNotFoundError:
                known = None
            load_exclusions(input_base, known_ids=known)
        return
    if not os.path.lexists(labels_path(input_base)):
        return
    images, masks = os.path.join(input_base, "img"), os.path.join(input_base, "mask")
    known = None
    if os.path.isdir(images) and os.path.isdir(masks):
        known = {s.pair_id for s in discover_pairs(images, masks, PairingConfig())}
    load_exclusions(input_base, known_ids=known)
