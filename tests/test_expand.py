"""The extended set L^l = L^t ∪ U^p (Xu et al., NeurIPS 2019, Section 3; Eq. 7) and its on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_png

from pucli.checkpoints import load_model, weights_digest
from pucli.data.index import IndexEntry
from pucli.data.loading import ImageDataset, Preprocess
from pucli.data.manifest import (
    CLASSES_NAME,
    MANIFEST_NAME,
    SOFT_TARGETS_NAME,
    read_expanded_set,
    retemper,
    write_expanded_set,
)
from pucli.data.sources import LabeledFolder
from pucli.errors import DataError, UsageError
from pucli.kd.expand import build_expanded_set, expand

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def inputs(make_class_folder, make_pool, tiny_teacher, tmp_path):
    """(positive_set, index with 6 selected + 2 rejected entries, loaded teacher)."""
    teacher = load_model(tiny_teacher)
    positive_set = LabeledFolder.from_folder(make_class_folder("pos", per_class=2), num_classes=3, label_names=["0", "1", "2"])
    pool = sorted(make_pool("pool", count=8).rglob("*.png"))
    index = [IndexEntry(p, 2.0 - 0.5 * i, selected=i < 6) for i, p in enumerate(pool)]
    return positive_set, index, teacher


def _small_set(tmp_path: Path, n: int = 4) -> object:
    paths = [write_png(tmp_path / "img" / f"{i}.png", seed=i) for i in range(n)]
    targets = torch.softmax(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    return build_expanded_set(
        paths=paths, origins=["positive", "positive"] + ["unlabeled"] * (n - 2), labels=[0, 2] + [-1] * (n - 2),
        scores=[None, None] + [0.5] * (n - 2), soft_targets=targets, temperature=1.0, teacher_digest="sha256:x",
        class_names=["a", "b", "c"],
    )


def test_manifest_round_trip_keeps_every_field(tmp_path):
    written = _small_set(tmp_path)
    folder = tmp_path / "set"
    folder.mkdir()
    write_expanded_set(written, folder)
    read = read_expanded_set(folder)
    assert read.paths == [p.absolute() for p in written.paths]
    assert read.origins == written.origins and read.labels == written.labels and read.scores == written.scores
    assert torch.equal(read.soft_targets, written.soft_targets)
    assert read.temperature == 1.0 and read.teacher_digest == "sha256:x" and read.class_names == ["a", "b", "c"]
    assert read.positive_counts == [1, 0, 1] and sum(read.unlabeled_counts) == 2
    assert (folder / MANIFEST_NAME).read_text().splitlines()[0] == "#pucli-manifest v1"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / SOFT_TARGETS_NAME).unlink(), "has no soft_targets.safetensors"),
        (lambda f: Path(_rows(f)[2].split("\t")[0]).unlink(), "do not exist"),
        (lambda f: _rewrite(f, 2, "only\ttwo"), "expected 4 tab-separated fields"),
        (lambda f: _rewrite(f, 2, "/x.png\tpositive\tone\t"), "is not an integer"),
        (lambda f: _rewrite(f, 3, "/x.png\tnegative\t-1\t0.5"), "origin must be positive or unlabeled"),
        (lambda f: _rewrite(f, 0, "#pucli-manifest v9"), "unsupported version"),
        (lambda f: _drop_last_row(f), "lists 3 items but soft_targets.safetensors has 4 rows"),
        (lambda f: (f / CLASSES_NAME).write_text("{"), "is not valid JSON"),
    ],
    ids=["missing-soft-targets", "missing-image", "short-row", "bad-label", "bad-origin", "version", "row-count", "classes-json"],
)
def test_read_expanded_set_rejects_damage_with_one_line_data_error(tmp_path, damage, message):
    folder = tmp_path / "set"
    folder.mkdir()
    write_expanded_set(_small_set(tmp_path), folder)
    damage(folder)
    with pytest.raises(DataError, match=message) as caught:
        read_expanded_set(folder)
    assert "\n" not in str(caught.value)


def _rows(folder: Path) -> list[str]:
    return (folder / MANIFEST_NAME).read_text().splitlines()


def _rewrite(folder: Path, line: int, text: str) -> None:
    rows = _rows(folder)
    rows[line] = text
    (folder / MANIFEST_NAME).write_text("\n".join(rows) + "\n")


def _drop_last_row(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text("\n".join(_rows(folder)[:-1]) + "\n")


def test_read_expanded_set_missing_folder_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        read_expanded_set(tmp_path / "nope")


def test_expand_lists_positives_then_selected_entries_in_index_order(inputs, tmp_path):
    positive_set, index, teacher = inputs
    expanded = expand(positive_set, index, teacher, tmp_path / "out")
    assert expanded.origins == ["positive"] * 6 + ["unlabeled"] * 6
    assert expanded.paths[6:] == [e.path for e in index[:6]]
    assert expanded.scores[6:] == [e.score for e in index[:6]]
    assert expanded.labels == positive_set.labels + [-1] * 6
    assert read_expanded_set(tmp_path / "out").paths == [p.absolute() for p in expanded.paths]


def test_whole_pool_takes_every_entry_kept_or_not_with_its_score(inputs, tmp_path):
    positive_set, index, teacher = inputs
    expanded = expand(positive_set, index, teacher, tmp_path / "out", whole_pool=True)
    assert expanded.origins == ["positive"] * 6 + ["unlabeled"] * 8  # the 2 rejected entries too
    assert expanded.paths[6:] == [e.path for e in index]
    assert expanded.scores[6:] == [e.score for e in index]


def test_soft_targets_equal_softmax_of_teacher_logits_over_temperature(inputs, tmp_path):
    positive_set, index, teacher = inputs
    expand(positive_set, index, teacher, tmp_path / "out", temperature=2.0)
    stored = read_expanded_set(tmp_path / "out")
    preprocess = Preprocess(teacher.config)
    images = torch.stack([ImageDataset(stored.paths, preprocess)[i][1] for i in range(len(stored))])
    with torch.no_grad():
        expected = torch.softmax(teacher.model(preprocess.normalize(images)) / 2.0, dim=1)
    torch.testing.assert_close(stored.soft_targets, expected, rtol=1e-5, atol=1e-6)
    assert stored.temperature == 2.0 and stored.teacher_digest == weights_digest(teacher.path)


def test_classes_json_weights_match_eq7_computed_by_hand_from_stored_soft_targets(inputs, tmp_path):
    positive_set, index, teacher = inputs
    expand(positive_set, index, teacher, tmp_path / "out")
    stored = read_expanded_set(tmp_path / "out")
    classes = json.loads((tmp_path / "out" / CLASSES_NAME).read_text())
    counts = stored.soft_targets.double().sum(dim=0).tolist()
    assert min(counts) > 0.01 * sum(counts) / 3  # the floor of robust_kd.class_weights does not bind here
    inverse = [1.0 / y for y in counts]
    by_hand = [3 * v / sum(inverse) for v in inverse]  # Eq. 7: w^k = (K / y^k) / sum_j 1 / y^j
    assert classes["soft_counts"] == pytest.approx(counts, rel=1e-9)
    assert classes["class_weights"] == pytest.approx(by_hand, rel=1e-9)
    assert classes["counts"]["positive"] == [2, 2, 2]
    assert sum(classes["counts"]["unlabeled"]) == 6


def test_expand_skips_unreadable_files_and_drops_them_from_the_manifest(inputs, tmp_path):
    positive_set, index, teacher = inputs
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    skipped = []
    expanded = expand(positive_set, [*index, IndexEntry(broken, 0.1)], teacher, tmp_path / "out", skipped=skipped)
    assert [s.path for s in skipped] == [str(broken)]
    assert broken not in expanded.paths and len(read_expanded_set(tmp_path / "out")) == 12


def test_expand_replaces_an_earlier_set_but_refuses_other_folders(inputs, tmp_path):
    positive_set, index, teacher = inputs
    expand(positive_set, index, teacher, tmp_path / "out")
    expand(positive_set, index[:2], teacher, tmp_path / "out")
    assert len(read_expanded_set(tmp_path / "out")) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "out").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's private 0700
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an expanded set"):
        expand(positive_set, index, teacher, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_retemper_matches_softmax_at_the_new_temperature():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    at_one = torch.softmax(logits, dim=1)
    torch.testing.assert_close(retemper(at_one, 1.0, 3.0), torch.softmax(logits / 3.0, dim=1), rtol=1e-5, atol=1e-6)
