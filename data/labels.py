"""Reviewed labels: which pairs a person decided to leave out of training, and why.

People review their masks (`tailings labels review` ranks the suspicious ones) and record their
decisions in `labels.yaml`, next to `img/` and `mask/` in the data folder:

```yaml
# tailings-seg label review decisions
pairs:
  - id: "56"            # pair id as tailings names it (img_56.tif / mask_56.tif -> "56")
    decision: exclude    # exclude | keep
    reason: "polygon covers the whole facility incl. forest"
  - id: "12"
    decision: keep
    reason: "checked by eye, mask fine"
```

A reason is required for `exclude` and optional for `keep`. An id is taken exactly as written,
so `id: 012` means pair "012" (YAML itself would read it as the octal number 10); quoting ids
is still the clearest. `tailings convert` and the pipeline's ExampleGen reject every excluded
pair with reason `excluded_by_review` (see `data.pairs`), so it shows up in rejected.jsonl with
the reason given here instead of silently disappearing. A `keep` records that a suspicious mask
was checked, so a later review does not propose it again (`merge_proposals`).

Any problem with the file is a `LabelsFileError` whose message starts with the file's path.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from data.errors import TailingsError

LABELS_FILE = "labels.yaml"
EXCLUDE = "exclude"
KEEP = "keep"
DECISIONS = (EXCLUDE, KEEP)

_TITLE = "tailings-seg label review decisions"
_ENTRY_KEYS = ("id", "decision", "reason")


@dataclass(frozen=True)
class LabelDecision:
    """A person's decision about one pair's mask."""

    pair_id: str
    decision: str  # one of DECISIONS
    reason: str


class LabelsFileError(TailingsError, ValueError):
    """A labels file that cannot be used; the message starts with the file's path."""


def labels_path(input_base: str | os.PathLike) -> Path:
    """Where the labels file of a data folder (the one holding `img/` and `mask/`) lives.
    For a URI (gs://...) see `labels_uri`."""
    return Path(input_base) / LABELS_FILE


def is_uri(path: str | os.PathLike) -> bool:
    """An object store URI (gs://bucket/...), read with Beam's FileSystems, not the OS."""
    return "://" in str(path)


def labels_uri(input_base: str) -> str:
    """`labels_path` for a URI input base: `Path` would fold its `//`."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(input_base, LABELS_FILE)


def read_labels(
    path: str | os.PathLike, known_ids: Collection[str] | None = None
) -> dict[str, LabelDecision]:
    """Every decision of a labels file by pair id, in file order.

    With `known_ids` (the pair ids found in the data), an id not among them is an error: a
    typo would otherwise leave the pair it meant in the training data.
    """
    path = str(path) if is_uri(path) else Path(path)

    def fail(problem: str) -> LabelsFileError:
        return LabelsFileError(f"{path}: {problem}")

    try:
        raw = _read_uri(path) if isinstance(path, str) else path.read_bytes()
    except OSError as err:
        raise fail(f"cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as err:
        problem = f"not valid YAML{_at(err.problem_mark)}: {err.problem or err}"
        if err.context:
            problem += f" ({err.context}{_at(err.context_mark, 'started at')})"
        raise fail(problem) from None
    except yaml.YAMLError as err:
        raise fail(f"not valid YAML: {err}") from None

    expected = "expected a mapping with a `pairs:` list (see data/labels.py for the format)"
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise fail(f"top level is {found}; {expected}")
    if "pairs" not in data:
        raise fail(f"no `pairs` key; {expected}")
    extra = sorted(str(k) for k in data if k != "pairs")
    if extra:
        raise fail(f"unknown top-level key(s) {', '.join(extra)}; {expected}")
    entries = data["pairs"]
    if entries is None:  # `pairs:` with nothing under it: no decisions yet
        entries = []
    if not isinstance(entries, list):
        raise fail(f"`pairs` is a {type(entries).__name__}; {expected}")

    decisions: dict[str, LabelDecision] = {}
    first_entry: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise fail(
                f"entry {number} is a {type(entry).__name__}, expected a mapping with keys "
                f"{', '.join(_ENTRY_KEYS)}"
            )
        if isinstance(entry.get("id"), dict | list):
            raise fail(f"entry {number}: `id` must be text or a number")
        pair_id = _entry_id(entry.get("id"), raw, number)
        label = f'entry {number} (id "{pair_id}")' if pair_id else f"entry {number}"
        unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
        if unknown:
            raise fail(
                f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_ENTRY_KEYS)}"
            )
        if not pair_id:
            raise fail(f"{label}: missing or empty `id`")
        decision = entry.get("decision")
        if decision not in DECISIONS:
            shown = "missing" if decision is None else f'"{decision}"'
            raise fail(f"{label}: decision {shown}; allowed: {', '.join(DECISIONS)}")
        reason = entry.get("reason")
        if isinstance(reason, dict | list):
            raise fail(f"{label}: `reason` must be text, got a {type(reason).__name__}")
        reason = "" if reason is None else str(reason)
        if decision == EXCLUDE and not reason.strip():
            raise fail(f"{label}: `exclude` needs a reason (say what is wrong with the mask)")
        if pair_id in decisions:
            raise fail(f'entries {first_entry[pair_id]} and {number} both decide id "{pair_id}"')
        if known_ids is not None and pair_id not in known_ids:
            raise fail(
                f"{label}: unknown pair id; the data has {len(known_ids)} pairs (img_<id>.tif)"
            )
        decisions[pair_id] = LabelDecision(pair_id, decision, reason)
        first_entry[pair_id] = number
    return decisions


def _at(mark, words: str = "at") -> str:
    return f" {words} line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _entry_id(value, raw: bytes, number: int) -> str:
    """An entry's id as text; a number (or other plain scalar) exactly as it was written."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    # `id: 012` loads as 10 and `id: 1_0` as 10: take the scalar's source text instead.
    try:
        root = yaml.compose(raw, Loader=yaml.SafeLoader)
        pairs = next(v for k, v in root.value if k.value == "pairs")
        entry = pairs.value[number - 1]
        return next(v for k, v in entry.value if k.value == "id").value.strip()
    except (AttributeError, IndexError, StopIteration, TypeError, yaml.YAMLError):
        return str(value)


def exclusions(decisions: dict[str, LabelDecision] | Iterable[LabelDecision]) -> dict[str, str]:
    """Pair id -> reason, for the pairs decided `exclude`."""
    values = decisions.values() if isinstance(decisions, dict) else decisions
    return {d.pair_id: d.reason for d in values if d.decision == EXCLUDE}


def load_exclusions(
    input_base: str | os.PathLike, known_ids: Collection[str] | None = None
) -> dict[str, str]:
    """The exclusions of a data folder's labels file; {} when it has none."""
    if is_uri(input_base):
        from apache_beam.io.filesystems import FileSystems

        uri = labels_uri(str(input_base))
        return exclusions(read_labels(uri, known_ids)) if FileSystems.exists(uri) else {}
    path = labels_path(input_base)
    if not os.path.lexists(path):
        return {}
    return exclusions(read_labels(path, known_ids))


def _read_uri(uri: str) -> bytes:
    """An object's bytes through Beam's FileSystems (its errors as OSError, like a file's)."""
    from apache_beam.io.filesystem import BeamIOError, CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            return fh.read()
    except (BeamIOError, OSError, ValueError) as err:
        raise OSError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar (escapes what YAML needs, keeps readable non-ASCII)."""
    return yaml.safe_dump(text, default_style='"', allow_unicode=True, width=1 << 30).strip()


def write_labels(
    path: str | os.PathLike, decisions: Iterable[LabelDecision], header: str = ""
) -> None:
    """Write decisions in the labels file format, atomically (temp file + rename).

    `header` becomes comment lines at the top (default: the format's title line). Raises
    `ValueError` for decisions `read_labels` would refuse, so no unreadable file is written.
    """
    path = Path(path)
    lines = [f"# {line}".rstrip() for line in (header or _TITLE).splitlines()]
    body = []
    seen: set[str] = set()
    for d in decisions:
        if not d.pair_id.strip():
            raise ValueError(f"{path}: a decision has an empty pair id")
        if d.pair_id in seen:
            raise ValueError(f'{path}: two decisions for pair id "{d.pair_id}"')
        if d.decision not in DECISIONS:
            raise ValueError(
                f'{path}: pair id "{d.pair_id}": decision "{d.decision}"; '
                f"allowed: {', '.join(DECISIONS)}"
            )
        if d.decision == EXCLUDE and not d.reason.strip():
            raise ValueError(f'{path}: pair id "{d.pair_id}": `exclude` needs a reason')
        seen.add(d.pair_id)
        body.append(f"  - id: {_quoted(d.pair_id)}")
        body.append(f"    decision: {d.decision}")
        if d.reason:
            body.append(f"    reason: {_quoted(d.reason)}")
    lines.append("pairs:" if body else "pairs: []")
    text = "\n".join(lines + body) + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); keep the old file's mode, or a usual 0644.
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o644
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def merge_proposals(
    existing: dict[str, LabelDecision], proposed: Iterable[LabelDecision]
) -> list[LabelDecision]:
    """Existing decisions unchanged and in their order (a person's decision wins), then the
    proposals for pairs not decided yet (the first proposal for an id, in proposal order)."""
    merged = list(existing.values())
    decided = set(existing)
    for proposal in proposed:
        if proposal.pair_id not in decided:
            merged.append(proposal)
            decided.add(proposal.pair_id)
    return merged
