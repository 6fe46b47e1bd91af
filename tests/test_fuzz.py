"""Property tests (hypothesis) of the readers of user-supplied text: the selection index
(``pucli.index``), the expanded-set manifest (``pucli.manifest``) and the unlabeled path list
(``pucli.sources.read_path_list``).

On malformed or adversarial input a reader may only raise pucli's own errors (which the CLI turns
into one line and an exit code), never anything else; what a writer writes, its reader reads back.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pucli.data.files import read_path_list
from pucli.data.index import INDEX_TAG, IndexEntry, read_index, write_index
from pucli.data.manifest import (
    CLASSES_NAME,
    MANIFEST_NAME,
    SOFT_TARGETS_NAME,
    read_expanded_set,
    write_expanded_set,
)
from pucli.data.sources import UnlabeledPool
from pucli.errors import PucliError
from pucli.kd.expand import build_expanded_set

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from the pieces these formats are made of, so the fuzzer reaches deep into the
# parsers instead of failing at the first line, plus anything at all.
_PIECES = st.sampled_from([
    INDEX_TAG, "#pucli-index v2", "#pucli-manifest v1", "#pucli-manifest v0", "path", "score", "selected", "origin",
    "label", "positive", "unlabeled", "\t", "\n", "\r\n", "\r", "#", "-1", "0", "1", "2", "1e999", "-inf", "nan",
    "NaN", "3.5", "/abs/a.png", "rel/b.png", "~", "~nosuchuser/x.png", "\x00", "\x85", "\u2028", "\udcff", " ", "",
])
adversarial_text = st.one_of(st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join))
adversarial_bytes = st.one_of(st.binary(), adversarial_text.map(lambda t: t.encode("utf-8", "surrogateescape")))


def _only_pucli_errors(read, *args, **kwargs):  # noqa: ANN001, ANN202
    try:
        return read(*args, **kwargs)
    except PucliError as exc:
        assert "\n" not in str(exc), str(exc)  # one line, as the CLI prints it
        return None


# --- index -------------------------------------------------------------------------------------


@FUZZ
@given(text=adversarial_text)
def test_index_reader_on_any_text_from_stdin_raises_only_pucli_errors(text: str) -> None:
    entries = _only_pucli_errors(read_index, "-", stdin=io.StringIO(text))
    if entries is not None:
        assert all(isinstance(e.path, Path) and not math.isnan(e.score) for e in entries)


@FUZZ
@given(data=adversarial_bytes)
def test_index_reader_on_any_file_raises_only_pucli_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.tsv"
        path.write_bytes(data)
        _only_pucli_errors(read_index, path)


# Absolute paths whose components avoid the characters the format cannot carry.
_component = st.text(st.characters(blacklist_characters="\t\n\x00/", blacklist_categories=("Cs",)), min_size=1,
                     max_size=12).filter(lambda c: c not in (".", ".."))
absolute_paths = st.lists(_component, min_size=1, max_size=4).map(lambda parts: Path("/", *parts))
scores = st.floats(allow_nan=False)


@ROUND_TRIP
@given(rows=st.lists(st.tuples(absolute_paths, scores, st.booleans()), max_size=20), with_selected=st.booleans())
def test_index_round_trip_through_a_file_and_through_stdin(rows, with_selected: bool) -> None:
    entries = [IndexEntry(path, score, selected) for path, score, selected in rows]
    expected = [(e.path, float(f"{e.score:.6g}"), e.selected or not with_selected) for e in entries]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "index.tsv"
        write_index(entries, out, with_selected=with_selected)
        from_file = read_index(out)
        stdin = io.TextIOWrapper(io.BytesIO(out.read_bytes()), encoding="utf-8")
        from_stdin = read_index("-", stdin=stdin)
    for read_back in (from_file, from_stdin):
        assert [(e.path, e.score, e.selected) for e in read_back] == expected


def test_index_round_trips_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    odd = Path("/pool/caf\udce9.png")  # what os.listdir gives for the latin-1 bytes b"caf\xe9.png"
    write_index([IndexEntry(odd, 1.0), IndexEntry(Path("#hash.png"), 0.5)], tmp_path / "i.tsv")
    assert [e.path for e in read_index(tmp_path / "i.tsv")] == [odd, tmp_path / "#hash.png"]
    assert b"caf\xe9.png" in (tmp_path / "i.tsv").read_bytes()


# --- manifest ----------------------------------------------------------------------------------


def _expanded(paths: list[Path], labels: list[int], scores: list[float | None], num_classes: int):  # noqa: ANN202
    generator = torch.Generator().manual_seed(len(paths))
    soft = torch.softmax(torch.randn(len(paths), num_classes, generator=generator), dim=1)
    origins = ["positive" if label >= 0 else "unlabeled" for label in labels]
    return build_expanded_set(paths=paths, origins=origins, labels=labels, scores=scores, soft_targets=soft,
                              temperature=2.0, teacher_digest="sha256:00", class_names=[f"c{k}" for k in range(num_classes)])


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("set")
    write_expanded_set(_expanded([Path("/a.png"), Path("/b.png")], [0, -1], [None, 1.5], 3), folder)
    return folder


def _damaged_copy(valid: Path, folder: Path, name: str, data: bytes) -> Path:
    for item in (MANIFEST_NAME, SOFT_TARGETS_NAME, CLASSES_NAME):
        (folder / item).write_bytes((valid / item).read_bytes())
    (folder / name).write_bytes(data)
    return folder


@FUZZ
@given(data=adversarial_bytes)
def test_manifest_reader_on_any_manifest_raises_only_pucli_errors(valid_set: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _only_pucli_errors(read_expanded_set, _damaged_copy(valid_set, Path(folder), MANIFEST_NAME, data), check_files=False)


@FUZZ
@given(lines=st.lists(st.lists(st.one_of(_PIECES, st.text(max_size=6)), min_size=1, max_size=6).map("\t".join),
                      max_size=6))
def test_manifest_reader_on_rows_of_fields_raises_only_pucli_errors(valid_set: Path, lines: list[str]) -> None:
    text = "#pucli-manifest v1\npath\torigin\tlabel\tscore\n" + "\n".join(lines)
    with tempfile.TemporaryDirectory() as folder:
        data = text.encode("utf-8", "surrogateescape")
        _only_pucli_errors(read_expanded_set, _damaged_copy(valid_set, Path(folder), MANIFEST_NAME, data), check_files=False)


@FUZZ
@given(position=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=16), cut=st.booleans())
def test_manifest_reader_on_damaged_soft_targets_raises_only_pucli_errors(valid_set: Path, position: int, junk: bytes,
                                                                         cut: bool) -> None:
    original = (valid_set / SOFT_TARGETS_NAME).read_bytes()
    position %= len(original)
    data = original[:position] if cut else original[:position] + junk + original[position + len(junk):]
    with tempfile.TemporaryDirectory() as folder:
        _only_pucli_errors(read_expanded_set, _damaged_copy(valid_set, Path(folder), SOFT_TARGETS_NAME, data), check_files=False)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=12)


@FUZZ
@given(value=json_values, names=st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=5)))
def test_manifest_reader_on_any_classes_json_raises_only_pucli_errors(valid_set: Path, value, names) -> None:  # noqa: ANN001
    document = {"format_version": 1, "class_names": names} if names is not None else value
    with tempfile.TemporaryDirectory() as folder:
        data = json.dumps(document).encode()
        _only_pucli_errors(read_expanded_set, _damaged_copy(valid_set, Path(folder), CLASSES_NAME, data), check_files=False)


def test_manifest_reader_survives_deeply_nested_json(valid_set: Path, tmp_path: Path) -> None:
    _only_pucli_errors(read_expanded_set, _damaged_copy(valid_set, tmp_path, CLASSES_NAME, b"[" * 100_000),
                       check_files=False)


@ROUND_TRIP
@given(rows=st.lists(st.tuples(absolute_paths, st.integers(-1, 3), scores), min_size=1, max_size=15))
def test_manifest_round_trip_keeps_every_row(rows) -> None:  # noqa: ANN001
    paths = [path for path, _, _ in rows]
    labels = [label for _, label, _ in rows]
    row_scores = [score if label < 0 else None for _, label, score in rows]
    expanded = _expanded(paths, labels, row_scores, 4)
    with tempfile.TemporaryDirectory() as folder:
        write_expanded_set(expanded, folder)
        back = read_expanded_set(folder, check_files=False)
    assert back.paths == paths and back.labels == labels and back.scores == row_scores
    assert back.origins == expanded.origins and torch.equal(back.soft_targets, expanded.soft_targets)
    assert back.class_names == expanded.class_names and back.temperature == 2.0


# --- path list ---------------------------------------------------------------------------------


@FUZZ
@given(text=adversarial_text)
def test_path_list_reader_on_any_text_raises_only_pucli_errors(text: str) -> None:
    paths = _only_pucli_errors(read_path_list, io.StringIO(text), Path("/base"))
    if paths is not None:
        assert all(path.is_absolute() for path in paths)


@FUZZ
@given(data=adversarial_bytes)
def test_pool_from_any_list_file_or_stdin_raises_only_pucli_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "pool.txt"
        listing.write_bytes(data)
        _only_pucli_errors(UnlabeledPool.from_source, str(listing))
        stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        _only_pucli_errors(UnlabeledPool.from_source, "-", stdin=stdin)


# Entries as people write them: no surrounding blanks (stripped), not comments, no leading "~".
_list_entry = st.lists(_component.filter(lambda c: c == c.strip() and "\r" not in c and not c.startswith(("#", "~"))),
                       min_size=1, max_size=4).map(lambda parts: "/".join(parts))


@ROUND_TRIP
@given(entries=st.lists(st.tuples(st.booleans(), _list_entry), max_size=20), crlf=st.booleans())
def test_path_list_round_trip_with_comments_blank_lines_and_relative_paths(entries, crlf: bool) -> None:  # noqa: ANN001
    base = Path("/lists")
    lines, expected = ["# a comment", ""], []
    for absolute, entry in entries:
        lines.append(("/" if absolute else "") + entry)
        expected.append(Path("/" + entry) if absolute else base / entry)
    text = ("\r\n" if crlf else "\n").join(lines)
    assert read_path_list(io.StringIO(text, newline=""), base) == expected
