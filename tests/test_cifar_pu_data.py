"""benchmarks/cifar_pu_data.py on small synthetic tars with the shared data's member layout and
labels-CSV columns: nested, seeded labeled subsets; per-class counts; each pool's class prior by the
class map; ground truth that lists every shard member once, in the order pucli reads the pool; bytes
unchanged; the manifest-last rerun rule. One slow test builds from the real ``../shared/data``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cifar_pu_data as cp
from conftest import REAL_CACHE_DIR, SHARED_DATA, _run_benchmark_script

from pucli.data.shards import read_member, split_member
from pucli.data.sources import LabeledFolder, UnlabeledPool
from pucli.errors import DataError, UsageError

TRAIN_PER_CLASS = 101  # >= 100: the largest labeled subset
TEST_PER_CLASS = 3
CIFAR100_CLASSES = {"apple": 20, "bus": 15, "maple_tree": 25}  # 60 images, none of a CIFAR-10 class
# wnid -> (words, cifar10_class, images); 4 positive classes (120 images), 3 others (120 images).
TINY = {
    "n02123045": ("tabby, tabby cat", "cat", 30),
    "n02099601": ("golden retriever", "dog", 35),
    "n02085620": ("Chihuahua", "dog", 25),
    "n01641577": ("bullfrog, Rana catesbeiana", "frog", 30),
    "n01443537": ("goldfish, Carassius auratus", "", 40),
    "n02808440": ("bathtub, bathing tub, bath, tub", "", 45),
    "n04596742": ("wok", "", 35),
}
# classes.csv also lists classes that have no images in the tar.
TINY_UNUSED = {"n02129165": ("lion, king of beasts, Panthera leo", "", "ambiguous"),
               "n02480855": ("gorilla, Gorilla gorilla", "", "foreign")}
SHARD_SIZE = 50
N_TINY, N_TINY_POSITIVE, N_CIFAR100 = 240, 120, 60


def _image_bytes(rng: np.random.Generator, fmt: str, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), mode="RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(members[name]), 0o644
            archive.addfile(info, io.BytesIO(members[name]))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_data(root: Path, seed: int = 0) -> Path:
    """A stand-in for ``../shared/data``'s natural-image tars, labels CSVs, classes.csv and SHA256SUMS."""
    rng = np.random.default_rng(seed)
    for name, split, per_class in (("cifar10-train", "train", TRAIN_PER_CLASS),
                                   ("cifar10-test", "test", TEST_PER_CLASS)):
        members = {f"{split}/{cls}/{cls[:5]}_s_{i:06d}.png": _image_bytes(rng, "PNG", 8)
                   for cls in cp.CIFAR10_CLASSES for i in range(per_class)}
        _write_tar(root / cp.TARS[name], members)
        _write_csv(root / cp.LABELS[name], ["member", "label"], [[m, m.split("/")[1]] for m in sorted(members)])
    members = {f"train/{fine}/{fine}_s_{i:06d}.png": _image_bytes(rng, "PNG", 8)
               for fine, count in CIFAR100_CLASSES.items() for i in range(count)}
    _write_tar(root / cp.TARS["cifar100"], members)
    _write_csv(root / cp.LABELS["cifar100"], ["member", "fine_label"], [[m, m.split("/")[1]] for m in sorted(members)])
    members, rows = {}, []
    for wnid, (words, mapped, count) in TINY.items():
        for i in range(count):
            member = f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG"
            members[member] = _image_bytes(rng, "JPEG", 16)
            rows.append([member, wnid, words.split(",")[0], mapped])
    _write_tar(root / cp.TARS["tinyimagenet"], members)
    _write_csv(root / cp.LABELS["tinyimagenet"], ["member", "wnid", "words", "cifar10_class"], sorted(rows))
    _write_csv(root / cp.TINY_CLASSES, ["wnid", "words", "cifar10_class", "status"],
               [[wnid, words, mapped, "cifar10" if mapped else "other"] for wnid, (words, mapped, _) in TINY.items()]
               + [[wnid, words, mapped, status] for wnid, (words, mapped, status) in TINY_UNUSED.items()])
    sums = [f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}" for rel in cp.TARS.values()]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


def _build(data: Path, out: Path, **kwargs) -> dict | None:
    kwargs.setdefault("images_per_shard", SHARD_SIZE)
    return cp.materialise(data, out, progress=lambda _: None, **kwargs)


def _truth(root: Path, pool: str) -> list[dict[str, str]]:
    with open(root / "pools" / pool / "ground_truth.tsv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _source_members(data: Path) -> dict[str, dict[str, bytes]]:
    return {source: cp.read_tar(data / cp.TARS[source]) for source in ("tinyimagenet", "cifar100")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("shared") / "data")


@pytest.fixture(scope="module")
def built(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cache") / "cifar-pu"
    manifest = _build(data, out)
    assert manifest is not None
    return out, manifest


# --- labeled data ------------------------------------------------------------------------------------


def test_train_test_layout_counts_and_bytes(built: tuple[Path, dict], data: Path) -> None:
    root, manifest = built
    assert (root / "classes.txt").read_text().split() == list(cp.CIFAR10_CLASSES)
    assert sorted(manifest["parts"]) == sorted(cp.PARTS) and list(manifest["pools"]) == list(cp.POOLS)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(cp.CIFAR10_CLASSES)
        assert manifest[split]["per_class"] == {cls: per_class for cls in cp.CIFAR10_CLASSES}
        source = cp.read_tar(data / cp.TARS[f"cifar10-{split}"])
        written = {path.relative_to(root).as_posix(): path.read_bytes() for path in (root / split).rglob("*.png")}
        assert written == source  # the same member paths, the same bytes
        folder = LabeledFolder.from_folder(root / split, num_classes=10, label_names=list(cp.CIFAR10_CLASSES))
        assert folder.counts == [per_class] * 10


def test_positive_subsets_nested_seeded_and_linked(built: tuple[Path, dict]) -> None:
    root, manifest = built
    names = {cls: sorted(p.name for p in (root / "train" / cls).iterdir()) for cls in cp.CIFAR10_CLASSES}
    assert sorted(p.name for p in (root / "positive").iterdir()) == sorted(
        f"nl{n}-seed{s}" for n in cp.N_LABELED_PER_CLASS for s in cp.SUBSET_SEEDS)
    assert min(cp.N_LABELED_PER_CLASS) == 10 and max(cp.N_LABELED_PER_CLASS) == 100  # the n_l
    per_seed = {}
    for seed in cp.SUBSET_SEEDS:
        expected = cp.positive_permutations(names, seed)
        assert manifest["positive"]["first_100_per_class"][f"seed{seed}"] == {c: v[:100] for c, v in expected.items()}
        previous: dict[str, set[str]] = {cls: set() for cls in cp.CIFAR10_CLASSES}
        for n in cp.N_LABELED_PER_CLASS:
            subset = root / "positive" / f"nl{n}-seed{seed}"
            folder = LabeledFolder.from_folder(subset, num_classes=10, label_names=list(cp.CIFAR10_CLASSES))
            assert folder.counts == [n] * 10
            for cls in cp.CIFAR10_CLASSES:
                files = {p.name for p in (subset / cls).iterdir()}
                assert files == set(expected[cls][:n]) and previous[cls] <= files  # nested
                previous[cls] = files
                for name in files:  # hard links to train/
                    assert os.path.samefile(subset / cls / name, root / "train" / cls / name)
        per_seed[seed] = previous
    assert per_seed[0] != per_seed[1] != per_seed[2]
    # the rule is a pure function of the names and the seed
    assert cp.positive_permutations(names, 1) == cp.positive_permutations(names, 1)


# --- pools -------------------------------------------------------------------------------------------


def test_pool_counts_and_priors_by_class_map(built: tuple[Path, dict]) -> None:
    root, manifest = built
    n_negative = N_TINY - N_TINY_POSITIVE + N_CIFAR100
    k = cp.webcrawl_positive_count(n_negative)
    assert k == 6  # round(0.03 x 180 / 0.97)
    expected = {  # pool -> (images, positives, by source)
        "mixed": (N_TINY + N_CIFAR100, N_TINY_POSITIVE, {"cifar100": N_CIFAR100, "tinyimagenet": N_TINY}),
        "webcrawl": (n_negative + k, k, {"cifar100": N_CIFAR100, "tinyimagenet": N_TINY - N_TINY_POSITIVE + k}),
        "cifar100": (N_CIFAR100, 0, {"cifar100": N_CIFAR100}),
        "tinyimagenet": (N_TINY, N_TINY_POSITIVE, {"tinyimagenet": N_TINY}),
    }
    class_map = {wnid: mapped for wnid, (_, mapped, _) in TINY.items()}
    for pool, (images, positives, by_source) in expected.items():
        rows = _truth(root, pool)
        pool_manifest = json.loads((root / "pools" / pool / "manifest.json").read_text())
        assert len(rows) == images and pool_manifest["counts"]["by_source"] == by_source
        for row in rows:  # positive and cifar10_class follow the class map
            mapped = class_map.get(row["label"], "") if row["source"] == "tinyimagenet" else ""
            assert row["cifar10_class"] == mapped and row["positive"] == ("1" if mapped else "0")
        assert sum(row["positive"] == "1" for row in rows) == positives
        prior = round(positives / images, 6)
        assert pool_manifest["true_class_prior"] == manifest["pools"][pool]["true_class_prior"] == prior
        assert sum(pool_manifest["counts"]["positive_by_cifar10_class"].values()) == positives
    assert manifest["pools"]["mixed"]["true_class_prior"] == 0.4  # 120 of 300
    assert abs(manifest["pools"]["webcrawl"]["true_class_prior"] - cp.WEBCRAWL_PRIOR) < 0.005
    # webcrawl: every negative, and the positives spread evenly over the positive Tiny ImageNet classes
    rows = _truth(root, "webcrawl")
    per_wnid = {wnid: sum(r["label"] == wnid for r in rows) for wnid, (_, mapped, _) in TINY.items() if mapped}
    assert sorted(per_wnid.values()) == [1, 1, 2, 2] and sum(per_wnid.values()) == k
    assert {r["original"] for r in rows if r["positive"] == "0"} == {
        r["original"] for r in _truth(root, "mixed") if r["positive"] == "0"}


def test_truth_lists_every_member_once_in_pucli_order_bytes_unchanged(built: tuple[Path, dict], data: Path) -> None:
    root, manifest = built
    sources = _source_members(data)
    for pool in cp.POOLS:
        rows = _truth(root, pool)
        paths = [row["path"] for row in rows]
        pool_manifest = json.loads((root / "pools" / pool / "manifest.json").read_text())
        by_pattern = UnlabeledPool.from_source(pool_manifest["unlabeled"]).paths
        by_list = UnlabeledPool.from_source(str(root / "pools" / pool / "shards.txt")).paths
        assert [str(p) for p in by_pattern] == [str(p) for p in by_list] == paths  # every member, once, in order
        assert len(set(paths)) == len(paths) and len({(r["source"], r["original"]) for r in rows}) == len(rows)
        shards = [Path(line) for line in (root / "pools" / pool / "shards.txt").read_text().splitlines()]
        assert [row["images"] for row in pool_manifest["shards"]] == [
            min(SHARD_SIZE, len(rows) - k * SHARD_SIZE) for k in range(len(shards))]
        for shard, row in zip(shards, pool_manifest["shards"]):
            assert hashlib.sha256(shard.read_bytes()).hexdigest() == row["sha256"]
            with open(shard, "rb") as handle:
                assert handle.read(512)[257:263] == b"ustar\x00"  # POSIX ustar headers
        for position, row in enumerate(rows):
            shard, member = split_member(row["path"])
            extension = "jpeg" if row["source"] == "tinyimagenet" else "png"
            assert member == f"{position:06d}.{extension}"  # names tell neither source nor class
            assert bytes(read_member(shard, member)) == sources[row["source"]][row["original"]]


def test_seeded_determinism(built: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    root, manifest = built
    other = tmp_path / "again"
    _build(data, other, parts=["pools"], pools=["mixed", "webcrawl"])
    for pool in ("mixed", "webcrawl"):
        a = (root / "pools" / pool / "ground_truth.tsv").read_text().replace(str(root), "ROOT")
        b = (other / "pools" / pool / "ground_truth.tsv").read_text().replace(str(other), "ROOT")
        assert a == b
        shas = [json.loads((r / "pools" / pool / "manifest.json").read_text())["shards"] for r in (root, other)]
        assert [s["sha256"] for s in shas[0]] == [s["sha256"] for s in shas[1]]  # the same bytes, mtimes 0
    # the pool order is a seeded shuffle, not the sources' order
    sources = [row["source"] for row in _truth(root, "mixed")]
    assert sources != sorted(sources) and sources != sorted(sources, reverse=True)


def test_rerun_is_a_no_op_until_forced_or_more_is_asked(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cifar-pu"
    first = _build(data, out, parts=["pools"], pools=["cifar100"])
    assert first is not None and first["parts"] == ["pools"] and list(first["pools"]) == ["cifar100"]
    assert not (out / "train").exists() and not (out / "pools" / "mixed").exists()
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert _build(data, out, parts=["pools"], pools=["cifar100"]) is None
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    # asking for more builds only what is missing and keeps the rest in the manifest
    shard = out / "pools" / "cifar100" / "cifar100-000000.tar"
    inode = shard.stat().st_ino
    second = _build(data, out, parts=["positive", "pools"], pools=["cifar100", "tinyimagenet"])
    assert second is not None and second["parts"] == ["pools", "positive", "train"]  # positive pulls in train
    assert list(second["pools"]) == ["cifar100", "tinyimagenet"]
    assert second["pools"]["cifar100"] == first["pools"]["cifar100"]
    assert shard.stat().st_ino == inode
    assert _build(data, out, parts=["train", "positive"]) is None
    third = _build(data, out, parts=["pools"], pools=["cifar100"], force=True)
    assert third is not None and shard.stat().st_ino != inode
    assert third["parts"] == ["pools", "positive", "train"] and list(third["pools"]) == ["cifar100", "tinyimagenet"]
    assert not list(tmp_path.glob(".cifar-pu.partial-*"))  # staging cleaned up
    # other settings (say, the shard size) make the old build stale
    assert _build(data, out, parts=["pools"], pools=["cifar100"], images_per_shard=SHARD_SIZE + 1) is not None


def test_cli_prints_the_root(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "root"
    assert cp.main(["--data-dir", str(data), "--out", str(out), "--only", "pools", "--pools", "cifar100",
                    "--images-per-shard", "25"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{out}\n" and "cifar100/shards.txt" in captured.err
    assert len(list((out / "pools" / "cifar100").glob("*.tar"))) == 3
    code = cp.main(["--data-dir", str(data), "--out", str(out), "--only", "pools", "--pools", "nope"])
    assert code == UsageError.exit_code


def test_bad_inputs_are_refused(data: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    with open(broken / cp.TARS["cifar100"], "r+b") as handle:  # a flipped byte: SHA256SUMS catches it
        handle.seek(700)
        byte = handle.read(1)
        handle.seek(700)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match="sha256"):
        _build(broken, tmp_path / "a", parts=["test"])
    shutil.copy(data / cp.TARS["cifar100"], broken / cp.TARS["cifar100"])
    text = (broken / cp.TINY_CLASSES).read_text()
    (broken / cp.TINY_CLASSES).write_text(text.replace("wok,,other", "wok,truck,cifar10"))  # the class map disagrees
    with pytest.raises(DataError, match="class map"):
        _build(broken, tmp_path / "b", parts=["pools"], pools=["cifar100"])
    (broken / cp.TINY_CLASSES).write_text(text)
    labels = broken / cp.LABELS["cifar10-test"]
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")  # a member with no row
    with pytest.raises(DataError, match="does not match"):
        _build(broken, tmp_path / "c", parts=["test"])
    assert not (tmp_path / "c" / "manifest.json").exists()


# --- the real data -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar_pu_headline_numbers() -> None:
    """Build (or reuse) the real cifar-pu root in pucli's cache (~15 s) and check the issue's numbers."""
    if not (SHARED_DATA / cp.TARS["tinyimagenet"]).is_file():
        pytest.skip("../shared/data has no natural-image tars")
    root = REAL_CACHE_DIR / "benchmarks" / cp.SCENARIO
    _run_benchmark_script("cifar_pu_data.py", "--out", str(root))
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["test"]["images"] == 10_000 and manifest["train"]["images"] == 10_000
    assert sum(1 for _ in (root / "test").rglob("*.png")) == 10_000
    mixed = manifest["pools"]["mixed"]
    assert (mixed["images"], mixed["positive"], round(mixed["true_class_prior"], 3)) == (41_420, 11_500, 0.278)
    assert mixed["by_source"] == {"cifar100": 10_000, "tinyimagenet": 31_420}
    assert len(UnlabeledPool.from_source(mixed["unlabeled"]).paths) == 41_420
    rows = _truth(root, "mixed")
    assert len(rows) == 41_420 and sum(r["positive"] == "1" for r in rows) == 11_500
    assert {r["cifar10_class"] for r in rows} == {"", "automobile", "bird", "cat", "dog", "frog", "ship", "truck"}
    webcrawl = manifest["pools"]["webcrawl"]
    assert (webcrawl["positive"], webcrawl["images"], round(webcrawl["true_class_prior"], 2)) == (925, 30_845, 0.03)
    assert (manifest["pools"]["cifar100"]["images"], manifest["pools"]["cifar100"]["positive"]) == (10_000, 0)
    tiny = manifest["pools"]["tinyimagenet"]
    assert (tiny["images"], tiny["positive"]) == (31_420, 11_500)
    for n in (10, 100):
        assert sum(1 for _ in (root / "positive" / f"nl{n}-seed0").rglob("*.png")) == 10 * n
