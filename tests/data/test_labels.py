"""labels.yaml: reviewed decisions parsed strictly, with errors that name the file and entry."""

import re

import pytest

from data.labels import (
    DECISIONS,
    EXCLUDE,
    KEEP,
    LABELS_FILE,
    LabelDecision,
    LabelsFileError,
    exclusions,
    labels_path,
    load_exclusions,
    merge_proposals,
    read_labels,
    write_labels,
)

EXAMPLE = """\
# tailings-seg label review decisions
pairs:
  - id: "56"            # pair id as tailings names it (img_56.tif / mask_56.tif -> "56")
    decision: exclude    # exclude | keep
    reason: "polygon covers the whole facility incl. forest"
  - id: "12"
    decision: keep
    reason: "checked by eye, mask fine"
  - id: 7
    decision: keep
  - id: 012
    decision: exclude
    reason: cloud shadow
"""


def _write(tmp_path, text: str):
    path = tmp_path / LABELS_FILE
    path.write_text(text)
    return path


def _error(tmp_path, text: str, known_ids=None) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(LabelsFileError) as info:
        read_labels(path, known_ids)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_reads_decisions_in_file_order_with_numeric_ids_as_text(tmp_path):
    decisions = read_labels(_write(tmp_path, EXAMPLE))
    assert list(decisions) == ["56", "12", "7", "012"]  # 012 as written, not octal 10
    assert decisions["56"] == LabelDecision(
        "56", EXCLUDE, "polygon covers the whole facility incl. forest"
    )
    assert decisions["12"] == LabelDecision("12", KEEP, "checked by eye, mask fine")
    assert decisions["7"] == LabelDecision("7", KEEP, "")
    assert exclusions(decisions) == {
        "56": "polygon covers the whole facility incl. forest",
        "012": "cloud shadow",
    }


def test_known_ids_accept_every_decided_pair(tmp_path):
    path = _write(tmp_path, EXAMPLE)
    assert len(read_labels(path, known_ids={"56", "12", "7", "012", "99"})) == 4


def test_empty_pairs_list_means_no_decisions(tmp_path):
    assert read_labels(_write(tmp_path, "pairs: []\n")) == {}
    assert read_labels(_write(tmp_path, "# nothing yet\npairs:\n")) == {}


def test_unknown_pair_id_names_entry_and_data_size(tmp_path):
    text = EXAMPLE + '  - id: "99"\n    decision: keep\n'
    known = {"56", "12", "7", "012"} | {f"x{i}" for i in range(86)}
    message = _error(tmp_path, text, known_ids=known)
    assert message.endswith(
        'entry 5 (id "99"): unknown pair id; the data has 90 pairs (img_<id>.tif)'
    ), message


def test_bad_decision_says_which_are_allowed(tmp_path):
    message = _error(tmp_path, 'pairs:\n  - id: "3"\n    decision: drop\n    reason: x\n')
    assert 'entry 1 (id "3")' in message and '"drop"' in message
    assert all(d in message for d in DECISIONS)
    assert "decision missing" in _error(tmp_path, 'pairs:\n  - id: "3"\n')


def test_duplicate_id_names_both_entries(tmp_path):
    text = 'pairs:\n  - id: "3"\n    decision: keep\n  - id: "4"\n    decision: keep\n'
    text += "  - id: 3\n    decision: exclude\n    reason: bad\n"
    message = _error(tmp_path, text)
    assert "entries 1 and 3" in message and '"3"' in message


@pytest.mark.parametrize("reason", ["", "\n    reason: ''", '\n    reason: "  "'])
def test_exclude_needs_a_reason(tmp_path, reason):
    message = _error(tmp_path, f'pairs:\n  - id: "5"\n    decision: exclude{reason}\n')
    assert 'entry 1 (id "5")' in message and "needs a reason" in message


def test_invalid_yaml_gives_line_and_column(tmp_path):
    message = _error(tmp_path, 'pairs:\n  - id: "5\n    decision: keep\n')
    assert "not valid YAML" in message
    assert re.search(r"line \d+, column \d+", message), message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "top level is an empty file"),
        ("- id: '1'\n  decision: keep\n", "top level is a list"),
        ("decisions: []\n", "no `pairs` key"),
        ("pairs: []\nversion: 2\n", "unknown top-level key(s) version"),
        ("pairs:\n  id: '1'\n", "`pairs` is a dict"),
    ],
)
def test_wrong_top_level(tmp_path, text, problem):
    message = _error(tmp_path, text)
    assert problem in message and "`pairs:` list" in message, message


def test_entry_problems_are_numbered_from_one(tmp_path):
    head = 'pairs:\n  - id: "1"\n    decision: keep\n'
    assert "entry 2 is a str" in _error(tmp_path, head + "  - just text\n")
    assert "entry 2: missing or empty `id`" in _error(tmp_path, head + "  - decision: keep\n")
    assert "entry 2: missing or empty `id`" in _error(tmp_path, head + '  - id: ""\n')
    message = _error(tmp_path, head + '  - id: "2"\n    decision: keep\n    note: x\n')
    assert 'entry 2 (id "2"): unknown key(s) note' in message


def test_write_then_read_gives_the_same_decisions(tmp_path):
    decisions = [
        LabelDecision("56", EXCLUDE, 'polygon covers "the whole" facility: forest # too'),
        LabelDecision("012", KEEP, ""),
        LabelDecision("7", KEEP, "checked by eye\nmask fine"),
        LabelDecision("true", EXCLUDE, "barragem não é rejeito ✓"),
    ]
    path = tmp_path / "data" / LABELS_FILE
    write_labels(path, decisions, header="proposed by tailings labels review\n\nedit freely")
    text = path.read_text()
    assert text.startswith("# proposed by tailings labels review\n#\n# edit freely\npairs:\n")
    assert '  - id: "56"\n    decision: exclude\n' in text
    assert list(read_labels(path).values()) == decisions
    assert not [p for p in path.parent.iterdir() if p.name != LABELS_FILE]  # no temp file left

    write_labels(path, [])
    assert path.read_text() == "# tailings-seg label review decisions\npairs: []\n"
    assert read_labels(path) == {}


def test_write_refuses_what_read_would_refuse(tmp_path):
    path = tmp_path / LABELS_FILE
    for bad in (
        [LabelDecision("1", EXCLUDE, "")],
        [LabelDecision("1", "maybe", "x")],
        [LabelDecision("1", KEEP, ""), LabelDecision("1", KEEP, "")],
    ):
        with pytest.raises(ValueError):
            write_labels(path, bad)
    assert not path.exists()


def test_merge_keeps_a_persons_decision_over_a_proposal():
    existing = {
        "12": LabelDecision("12", KEEP, "checked by eye"),
        "3": LabelDecision("3", EXCLUDE, "cloud"),
    }
    proposed = [
        LabelDecision("12", EXCLUDE, "label quality 0.12"),
        LabelDecision("40", EXCLUDE, "label quality 0.20"),
        LabelDecision("3", KEEP, ""),
        LabelDecision("40", KEEP, ""),
    ]
    assert merge_proposals(existing, proposed) == [
        LabelDecision("12", KEEP, "checked by eye"),
        LabelDecision("3", EXCLUDE, "cloud"),
        LabelDecision("40", EXCLUDE, "label quality 0.20"),
    ]


def test_load_exclusions(tmp_path):
    assert load_exclusions(tmp_path) == {}
    assert labels_path(tmp_path) == tmp_path / LABELS_FILE
    _write(tmp_path, EXAMPLE)
    assert load_exclusions(tmp_path) == {
        "56": "polygon covers the whole facility incl. forest",
        "012": "cloud shadow",
    }
    with pytest.raises(LabelsFileError, match="unknown pair id"):
        load_exclusions(tmp_path, known_ids={"56"})
