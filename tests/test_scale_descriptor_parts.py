"""The pool pass in parts (pucli.pu.descriptors.extract_descriptors_in_parts) runs one loader for all
the parts it extracts, and still gives the bits of one plain pass, fresh or resumed, with
unreadable files (a whole batch of them too) reported in pool order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_png

from pucli.checkpoints import load_model
from pucli.data import loading
from pucli.data.loading import Preprocess
from pucli.pu import descriptors
from pucli.pu.network import MultiScaleExtractor

CPU = torch.device("cpu")


@pytest.fixture
def pool(tmp_path: Path) -> list[Path]:
    """29 PNGs; positions 8-11 (all of the third batch of 4) and 17 are not images."""
    paths = []
    for i in range(29):
        path = tmp_path / "pool" / f"u{i:03d}.png"
        if 8 <= i < 12 or i == 17:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not an image")
        else:
            write_png(path, seed=i)
        paths.append(path)
    return paths


@pytest.fixture
def extractor_and_preprocess(tiny_teacher: Path, one_thread) -> tuple[MultiScaleExtractor, Preprocess]:
    teacher = load_model(tiny_teacher)
    return MultiScaleExtractor(teacher.model).eval(), Preprocess(teacher.config)


@pytest.fixture
def loaders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the DataLoaders made (each one starts its worker processes)."""
    made: list[int] = []
    original = loading.DataLoader

    def counting(*args, **kwargs):
        made.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(loading, "DataLoader", counting)
    monkeypatch.setattr(descriptors, "DESCRIPTOR_PART_IMAGES", 8)  # parts of 2 batches of 4
    return made


@pytest.mark.parametrize("workers", [0, 2])
def test_parts_are_extracted_by_one_loader_with_the_bits_of_one_plain_pass(
        pool, extractor_and_preprocess, loaders, tmp_path, workers) -> None:
    extractor, preprocess = extractor_and_preprocess
    plain_skipped: list = []
    plain = descriptors.extract_descriptors(extractor, pool, preprocess, device=CPU, batch_size=4,
                                            skipped=plain_skipped)
    loaders.clear()
    parts_skipped: list = []
    parts = tmp_path / "parts"
    parts.mkdir()
    in_parts = descriptors.extract_descriptors_in_parts(extractor, pool, preprocess, parts=parts, device=CPU,
                                                        batch_size=4, workers=workers, skipped=parts_skipped)
    assert len(loaders) == 1
    assert torch.equal(in_parts[0], plain[0]) and torch.equal(in_parts[1], plain[1])
    assert parts_skipped == plain_skipped and [Path(s.path).name for s in parts_skipped] == [
        "u008.png", "u009.png", "u010.png", "u011.png", "u017.png"]
    assert len(list(parts.glob("unlabeled-*.safetensors"))) == 4  # 8 + 8 + 8 + 5 images


def test_a_resumed_pass_extracts_only_the_missing_parts_and_gives_the_same_bits(
        pool, extractor_and_preprocess, loaders, tmp_path) -> None:
    extractor, preprocess = extractor_and_preprocess
    parts = tmp_path / "parts"
    parts.mkdir()
    first_skipped: list = []
    first = descriptors.extract_descriptors_in_parts(extractor, pool, preprocess, parts=parts, device=CPU,
                                                     batch_size=4, skipped=first_skipped)
    for lost in ("unlabeled-0000000008-8.safetensors", "unlabeled-0000000024-5.safetensors"):
        (parts / lost).unlink()  # an interrupted run: the second and the last part never written
    extracted: list[int] = []
    extract = descriptors.extract_descriptors
    resumed_skipped: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(descriptors, "extract_descriptors",
                      lambda extractor, paths, *a, **k: extracted.append(len(paths)) or extract(extractor, paths, *a, **k))
        resumed = descriptors.extract_descriptors_in_parts(extractor, pool, preprocess, parts=parts, device=CPU,
                                                           batch_size=4, skipped=resumed_skipped)
    assert extracted == [13]  # the two missing parts, in one pass
    assert torch.equal(resumed[0], first[0]) and torch.equal(resumed[1], first[1])
    assert resumed_skipped == first_skipped
