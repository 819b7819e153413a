"""Apache Beam conversion of GeoTIFF image/mask pairs into GZIP TFRecords of tf.Example.

Bad pairs leave through a tagged dead-letter output and land in `rejected.jsonl` with their
reason, so one broken file never costs the good ones. Pairs a person excluded in `labels.yaml`
(see `data.labels`) are not read at all and leave the same way, with reason `excluded_by_review`.
The same `ConvertPairs` transform is used by `tailings convert` and by the pipeline's
ExampleGen; extra Beam options pass through unchanged, so the job runs on Dataflow, Flink or
Spark as well as the local DirectRunner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from data.beam_options import direct_args
from data.config import ConversionConfig, ValidationConfig
from data.errors import TailingsError, os_reason
from data.examples import to_example
from data.lock import lock_local_output
from data.pairs import (
    CONVERSION_FAILED,
    SITE_PREFIX,
    GeoPair,
    PairSpec,
    Rejection,
    _natural_key,
    discover_pairs,
    excluded_by_review,
    validate,
)
from data.sites import SITES_FILE, SitePlan, plan_sites, site_agreement, site_digest, site_label

METRICS_NAMESPACE = "tailings.convert"
CONVERTED = "converted"
REJECTED = "rejected"
WRITTEN = "written"
SITES = "sites"  # tagged output: one record per site with a converted tile


@dataclass(frozen=True)
class ShardPlan:
    """Where each pair goes: a split by hash of its site's id, then a shard within the split.

    By site (`data.sites`), not by pair: tiles of one site show the same ground, so a split by
    tile would train on pixels it then scores. A shard holds whole sites, so the conversion
    finds every tile of a site in one place to build its site labels. Hashing the id (not
    arrival order) makes the assignment deterministic: the same pairs give byte-identical
    shards whatever the number of workers, and a site never changes split when unrelated pairs
    are added. A pair missing from `sites` is a site of its own.
    """

    shards: int = 4
    splits: tuple[tuple[str, int], ...] = (("", 1),)  # (name, hash buckets); "" = no split
    file_pattern: str = "examples-{shard:05d}-of-{shards:05d}.tfrecord.gz"
    sites: Mapping[str, str] = field(default_factory=dict)  # pair id -> site id

    def site(self, pair_id: str) -> str:
        return self.sites.get(pair_id) or SITE_PREFIX + pair_id

    def key(self, pair_id: str) -> tuple[str, int]:
        digest = site_digest(self.site(pair_id))
        buckets = sum(b for _, b in self.splits)
        bucket, rest = digest % buckets, digest // buckets
        for name, size in self.splits:
            if bucket < size:
                return name, rest % self.shards
            bucket -= size
        raise AssertionError("unreachable: bucket beyond the split sizes")

    def all_keys(self) -> list[tuple[str, int]]:
        return [(name, shard) for name, _ in self.splits for shard in range(self.shards)]

    def path(self, output_dir: str, key: tuple[str, int]) -> str:
        split, shard = key
        return FileSystems.join(
            output_dir, self.file_pattern.format(split=split, shard=shard, shards=self.shards)
        )


@contextlib.contextmanager
def atomic_tfrecord(final: str) -> Iterator:
    """A GZIP TFRecord writer to a temporary name beside `final`, renamed to `final` when the
    block ends without an error, so a retried bundle never leaves half a shard behind.

    On any error the temporary file is removed; an error of the file system itself (a full
    disk, a read-only or vanished folder) becomes a `ShardWriteError` naming the shard and the
    OS error, instead of TensorFlow's or Beam's exception types.

    On an object store (gs://...) the shard is written to `final` itself: an object becomes
    visible only when its upload completes, whole, so the rename (a copy and a delete there,
    through GCS's batch API) would buy nothing; on an error the object is removed."""
    import tensorflow as tf

    parent = final.rsplit("/", 1)[0]
    remote = "://" in final
    temp = final if remote else f"{final}.tmp-{uuid.uuid4().hex}"
    writer = None
    try:
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
        writer = tf.io.TFRecordWriter(temp, options="GZIP")
        yield writer
        writer.close()  # flushes: a full disk often shows only here
        if not remote:
            FileSystems.rename([temp], [final])
    except BaseException as err:
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()
        with contextlib.suppress(Exception):
            if remote and tf.io.gfile.exists(temp):
                tf.io.gfile.remove(temp)
            elif FileSystems.exists(temp):
                FileSystems.delete([temp])
        if isinstance(err, (OSError, tf.errors.OpError)):
            raise ShardWriteError(f"cannot write shard {final} ({_os_error_text(err)})") from err
        raise


class ShardWriteError(TailingsError):
    """A shard could not be written: a full disk, a read-only or vanished output folder.

    Its text is the contract: Beam re-raises a DoFn's error as a new exception (and from worker
    processes only as text, inside a RuntimeError), so `shard_write_failure` finds the shard
    and the OS error in whatever reaches the caller of the pipeline."""


_SHARD_WRITE = re.compile(r"cannot write shard (?P<path>.+?) \((?P<reason>[^()\n]+)\)")


def shard_write_failure(error: BaseException | str) -> tuple[str, str] | None:
    """(shard path, OS error) if `error` (an exception, its chain, or a log line) says that a
    shard could not be written; None for anything else."""
    seen: list[BaseException | str] = [error]
    while isinstance(seen[-1], BaseException) and len(seen) < 10:
        nxt = seen[-1].__cause__ or seen[-1].__context__
        if nxt is None:
            break
        seen.append(nxt)
    for item in seen:
        match = _SHARD_WRITE.search(str(item))
        if match:
            return match["path"], match["reason"]
    return None


def _os_error_text(err: BaseException) -> str:
    """`data.errors.os_reason`, with parentheses made brackets: they delimit it in the message."""
    return os_reason(err).replace("(", "[").replace(")", "]")


class WriteShardFn(beam.DoFn):
    """Convert the pairs of one shard and write them as one GZIP TFRecord file.

    Written by hand rather than with `WriteToTFRecord(num_shards=N)`: that transform shuffles
    every serialized example (2.4 MB per 448x448 pair) through a GroupByKey, while grouping the
    few-byte pair specs by shard moves only file names between workers. The file is written to
    a temporary name and renamed, so a retried bundle never leaves half a shard.

    Pairs in `excluded` (pair id -> reason, from `labels.yaml`) are rejected without being read.
    Anything else one pair raises (a decoder crash, memory) rejects that pair with reason
    `conversion_failed`, never the job: the other pairs of the shard are still written.
    """

    def __init__(
        self,
        cfg: ValidationConfig,
        plan: ShardPlan,
        output_dir: str,
        excluded: Mapping[str, str] | None = None,
    ) -> None:
        self._cfg = cfg
        self._plan = plan
        self._output_dir = output_dir
        self._excluded = dict(excluded or {})  # a plain dict: the DoFn is pickled to workers

    def setup(self) -> None:
        self._converted = Metrics.counter(METRICS_NAMESPACE, CONVERTED)
        self._rejected = Metrics.counter(METRICS_NAMESPACE, REJECTED)

    def process(self, keyed):
        key, specs = keyed
        final = self._plan.path(self._output_dir, key)
        by_site: dict[str, list[PairSpec]] = {}
        for spec in sorted((s for s in specs if s is not None), key=lambda s: s.pair_id):
            by_site.setdefault(self._plan.site(spec.pair_id), []).append(spec)
        written: dict[str, bytes] = {}
        # One site at a time: its tiles are in memory together, never the whole shard's.
        for site_id in sorted(by_site):
            valid: list[tuple[PairSpec, GeoPair]] = []
            for spec in by_site[site_id]:
                result = self._validate(spec)
                if isinstance(result, Rejection):
                    yield from self._reject(result)
                else:
                    valid.append((spec, result))
            tiles = [tile for _, tile in valid]
            for spec, tile in valid:
                try:
                    pair = dataclasses.replace(
                        tile, site_id=site_id, site_mask=site_label(tile, tiles)
                    )
                    # Deterministic: map order would otherwise differ between processes.
                    written[tile.pair_id] = to_example(pair).SerializeToString(deterministic=True)
                except Exception as err:  # noqa: BLE001 - one pair must never fail the job
                    yield from self._reject(_failed(spec, err))
            if tiles:
                yield beam.pvalue.TaggedOutput(SITES, self._site_record(site_id, tiles))
        with atomic_tfrecord(final) as writer:
            for pair_id in sorted(written):
                writer.write(written[pair_id])
                self._converted.inc()
                Metrics.counter(METRICS_NAMESPACE, f"{CONVERTED}.{key[0]}").inc()
        yield {"split": key[0], "path": final, "examples": len(written)}

    def _validate(self, spec: PairSpec) -> GeoPair | Rejection:
        if spec.pair_id in self._excluded:
            return excluded_by_review(spec, self._excluded[spec.pair_id])
        try:
            return validate(spec, self._cfg)
        except Exception as err:  # noqa: BLE001 - one pair must never fail the job
            return _failed(spec, err)

    def _reject(self, rejection: Rejection):
        self._rejected.inc()
        Metrics.counter(METRICS_NAMESPACE, f"{REJECTED}.{rejection.reason}").inc()
        yield beam.pvalue.TaggedOutput(REJECTED, rejection.to_dict())

    @staticmethod
    def _site_record(site_id: str, tiles: Sequence[GeoPair]) -> dict:
        record: dict = {"site": site_id, "converted": sorted(t.pair_id for t in tiles)}
        try:
            record.update(site_agreement(tiles))
        except Exception as err:  # noqa: BLE001 - a report figure must not fail the job
            record["agreement_error"] = f"{type(err).__name__}: {_first_line(err)}"
        return record


def _failed(spec: PairSpec, err: BaseException) -> Rejection:
    """`conversion_failed` for anything one pair raised while it was converted."""
    return Rejection.of(spec, CONVERSION_FAILED, f"{type(err).__name__}: {_first_line(err)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class ConvertPairs(beam.PTransform):
    """PCollection[PairSpec] -> {written: shard records, rejected: dict} (dead-letter pattern).

    Every shard of the plan is written, empty or not, so readers always find `shards` files.
    Pairs in `excluded` (pair id -> reason) are rejected with reason `excluded_by_review`.
    """

    def __init__(
        self,
        output_dir: str,
        plan: ShardPlan = ShardPlan(),
        cfg: ValidationConfig = ValidationConfig(),
        excluded: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._output_dir = output_dir
        self._plan = plan
        self._cfg = cfg
        self._excluded = dict(excluded or {})

    def expand(self, specs):
        plan = self._plan
        keyed = specs | "Assign shard" >> beam.Map(lambda s: (plan.key(s.pair_id), s))
        every_shard = specs.pipeline | "All shards" >> beam.Create(
            [(k, None) for k in plan.all_keys()]
        )
        return (
            (keyed, every_shard)
            | "Merge" >> beam.Flatten()
            | "Group by shard" >> beam.GroupByKey()
            | "Validate, encode, write"
            >> beam.ParDo(
                WriteShardFn(self._cfg, plan, self._output_dir, self._excluded)
            ).with_outputs(REJECTED, SITES, main=WRITTEN)
        )


@dataclass
class ConversionSummary:
    """What `summary.json` holds."""

    pairs_found: int
    converted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    bytes_written: int
    seconds: float
    workers: int
    shards: list[str] = field(default_factory=list)
    converted_by_split: dict[str, int] = field(default_factory=dict)
    # Sites (`data.sites`) with at least one converted tile, in all and by split.
    sites: int = 0
    sites_by_split: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def one_line(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items()))
        splits = ", ".join(
            f"{k} {v} of {self.sites_by_split.get(k, 0)} sites"
            for k, v in self.converted_by_split.items()
            if k
        )
        return (
            f"converted {self.converted} of {self.pairs_found} pairs of {self.sites} sites"
            + (f" ({splits})" if splits else "")
            + f", rejected {self.rejected}"
            + (f" ({reasons})" if reasons else "")
            + f"; {self.bytes_written / 1e6:.1f} MB in {len(self.shards)} shards"
            + f" in {self.seconds:.1f} s"
        )


class ConversionError(TailingsError, RuntimeError):
    """A problem with the whole job (missing folder, nothing to convert), not with one pair."""


def _pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Beam pipeline; a bad runner option becomes one clear error instead of a traceback."""
    try:
        return beam.Pipeline(options=options)
    except ValueError as err:
        raise ConversionError(f"Beam pipeline options: {err}") from None


def _ticker(say: Callable[[str], None], what: str, stop: threading.Event, every: float) -> None:
    start = time.monotonic()
    while not stop.wait(every):
        say(f"  ... {what}: {time.monotonic() - start:.0f} s elapsed")


def convert_pairs(
    p: beam.Pipeline,
    specs: Sequence[PairSpec],
    output_dir: str,
    plan: ShardPlan,
    validation: ValidationConfig,
    rejected_path: str,
    excluded: Mapping[str, str] | None = None,
) -> None:
    """Add the conversion to a pipeline: shards under `output_dir`, rejections as JSON lines,
    one JSON line per site with a converted tile in `SITES_FILE` beside `rejected_path`
    (`summarize` completes it).

    Shared by `tailings convert` and the pipeline's ExampleGen, which brings its own pipeline.
    `plan` must carry the sites (`with_sites`). `excluded` (pair id -> reason, see
    `data.labels.load_exclusions`) names pairs to reject unread.
    """
    outputs = (
        p
        | "Pairs" >> beam.Create(specs)
        | "Convert" >> ConvertPairs(output_dir, plan, validation, excluded)
    )
    _ = (
        outputs[REJECTED]
        | "To JSON" >> beam.Map(json.dumps, sort_keys=True)
        | "Write rejected"
        >> beam.io.WriteToText(rejected_path, shard_name_template="", num_shards=1)
    )
    _ = (
        outputs[SITES]
        | "Sites to JSON" >> beam.Map(json.dumps, sort_keys=True)
        | "Write sites"
        >> beam.io.WriteToText(
            sites_file_beside(rejected_path), shard_name_template="", num_shards=1
        )
    )


def sites_file_beside(rejected_path: str) -> str:
    return FileSystems.join(rejected_path.rsplit("/", 1)[0], SITES_FILE)


def with_sites(plan: ShardPlan, specs: Sequence[PairSpec]) -> tuple[ShardPlan, SitePlan]:
    """`plan` with the sites of `specs` (`data.sites.plan_sites`: headers only)."""
    sites = plan_sites(specs)
    return dataclasses.replace(plan, sites=dict(sites.site_of)), sites


def summarize(
    result,
    specs: Sequence[PairSpec],
    plan: ShardPlan,
    output_dir: str,
    rejected_path: str,
    summary_path: str,
    seconds: float,
    workers: int,
    sites: SitePlan | None = None,
) -> ConversionSummary:
    """Counts from Beam metrics, rejections and the shard files; written as summary.json.
    The sites file (`convert_pairs`) is completed with every site of `sites` (those without
    a converted tile too), its split, tiles and extent, sorted by site."""
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))[
            "counters"
        ]
    }
    rejected_rows = _sort_rejected(rejected_path)
    site_rows = _complete_sites(sites_file_beside(rejected_path), sites, plan)
    converted_sites = [r for r in site_rows if r.get("converted")]
    paths = [plan.path(output_dir, key) for key in plan.all_keys()]
    shards = [m for r in FileSystems.match(paths) for m in r.metadata_list]
    by_reason: dict[str, int] = {}
    for row in rejected_rows:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    summary = ConversionSummary(
        pairs_found=len(specs),
        converted=int(counters.get(CONVERTED, 0)),
        rejected=len(rejected_rows),
        rejected_by_reason=by_reason,
        bytes_written=sum(m.size_in_bytes for m in shards),
        seconds=round(seconds, 3),
        workers=workers,
        shards=[m.path[len(output_dir) :].lstrip("/") for m in shards],
        converted_by_split={
            name: int(counters.get(f"{CONVERTED}.{name}", 0)) for name, _ in plan.splits
        },
        sites=len(converted_sites),
        sites_by_split={
            name: sum(1 for r in converted_sites if r["split"] == name) for name, _ in plan.splits
        },
    )
    with FileSystems.create(summary_path) as fh:
        fh.write(json.dumps(summary.to_dict(), indent=2, sort_keys=True).encode() + b"\n")
    return summary


def run_conversion(
    images_dir: str,
    masks_dir: str,
    output_dir: str,
    cfg: ConversionConfig = ConversionConfig(),
    beam_args: Sequence[str] = (),
    say: Callable[[str], None] = lambda _msg: None,
    progress_every: float = 10.0,
    excluded: Mapping[str, str] | None = None,
) -> ConversionSummary:
    """Convert every pair under two folders; write shards, rejected.jsonl and summary.json.

    `excluded` (pair id -> reason, see `data.labels.load_exclusions`) names pairs to reject
    with reason `excluded_by_review` instead of converting them.
    """
    start = time.monotonic()
    specs = discover_pairs(images_dir, masks_dir, cfg.pairing)
    if not specs:
        raise ConversionError(
            f"no {'/'.join(cfg.pairing.extensions)} files in {images_dir} or {masks_dir}"
        )
    # One job per output folder: a second `tailings convert` (or run) into it stops here.
    with lock_local_output(output_dir, "convert", say):
        plan, sites = with_sites(
            ShardPlan(shards=cfg.shards, file_pattern=cfg.examples_pattern), specs
        )
        say(
            f"found {len(specs)} candidate pairs in {len(sites.sites)} sites; "
            f"converting with {cfg.workers} worker(s)"
        )
        if not FileSystems.exists(output_dir):
            FileSystems.mkdirs(output_dir)
        _remove_old_outputs(output_dir, cfg)
        rejected_path = FileSystems.join(output_dir, cfg.rejected_file)

        stop = threading.Event()
        ticker = threading.Thread(
            target=_ticker,
            args=(say, f"converting {len(specs)} pairs", stop, progress_every),
            daemon=True,
        )
        ticker.start()
        try:
            direct = direct_args(cfg.workers, beam_args, running_mode=cfg.running_mode)
            with _pipeline(PipelineOptions([*direct, *beam_args])) as p:
                convert_pairs(p, specs, output_dir, plan, cfg.validation, rejected_path, excluded)
        finally:
            stop.set()
        return summarize(
            p.result,
            specs,
            plan,
            output_dir,
            rejected_path,
            FileSystems.join(output_dir, cfg.summary_file),
            time.monotonic() - start,
            cfg.workers,
            sites=sites,
        )


def _remove_old_outputs(output_dir: str, cfg: ConversionConfig) -> None:
    """A re-run must not mix its shards with an earlier run's (different shard counts)."""
    pattern = cfg.examples_pattern.split("{", 1)[0] + "*" + cfg.examples_pattern.rsplit("}", 1)[-1]
    old = [
        m.path for m in FileSystems.match([FileSystems.join(output_dir, pattern)])[0].metadata_list
    ]
    if old:
        FileSystems.delete(old)


def _complete_sites(path: str, sites: SitePlan | None, plan: ShardPlan) -> list[dict]:
    """The per-site records Beam wrote, joined with the site plan; rewritten sorted."""
    rows = {}
    if FileSystems.exists(path):
        with FileSystems.open(path) as fh:
            for line in fh.read().decode().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[row["site"]] = row
    for site in sites.sites if sites else ():
        row = rows.setdefault(site.site_id, {"site": site.site_id, "converted": []})
        row.update({"tiles": list(site.pair_ids), "bounds": list(site.bounds)})
    for row in rows.values():
        row["split"] = plan.key(row["tiles"][0] if row.get("tiles") else row["converted"][0])[0]
    ordered = [rows[k] for k in sorted(rows, key=lambda k: _natural_key(k))]
    with FileSystems.create(path) as fh:
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())
    return ordered


def _sort_rejected(path: str) -> list[dict]:
    """Beam writes rejections in arrival order; rewrite them sorted by id for stable diffs."""
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as fh:
        rows = [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["id"], r["reason"]))
    with FileSystems.create(path) as fh:
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return rows
