"""The stored form of compressed models (pucli.compressed_files): what load_model accepts and the one-line
errors for files it cannot trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pucli.checkpoints import load_model, save_model
from pucli.compress.steps import quantize
from pucli.compressed_files import COMPRESSION_KEY, is_compressed
from pucli.errors import TeacherFormatError


@pytest.fixture
def quantized(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    teacher = save_model(timm.create_model("test_resnet", num_classes=3, in_chans=1).eval(), tmp_path / "t.safetensors",
                         data_config={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)})
    quantize(str(teacher), str(tmp_path / "q.safetensors"), bits=4)
    return tmp_path / "q.safetensors"


def rewrite(path: Path, out: Path, *, drop: str | None = None, compression: dict | None = None) -> Path:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != drop}  # noqa: SIM118
    if compression is not None:
        metadata[COMPRESSION_KEY] = json.dumps(compression)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_only_files_with_the_compression_record_count_as_compressed(quantized: Path, tmp_path: Path) -> None:
    assert is_compressed(quantized)
    assert not is_compressed(tmp_path / "t.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x01")
    assert not is_compressed(tmp_path / "broken.safetensors")  # the plain reader reports it


def test_a_newer_format_version_asks_for_a_newer_pucli(quantized: Path, tmp_path: Path) -> None:
    record = json.loads(safe_open(str(quantized), framework="pt").metadata()[COMPRESSION_KEY])
    bad = rewrite(quantized, tmp_path / "v9.safetensors", compression={**record, "version": 9})
    with pytest.raises(TeacherFormatError, match="upgrade pucli") as info:
        load_model(bad, parameter="model")
    assert "\n" not in str(info.value)


def test_missing_codes_of_a_quantized_layer_are_one_line(quantized: Path, tmp_path: Path) -> None:
    bad = rewrite(quantized, tmp_path / "nocodes.safetensors", drop="layer1.0.conv1.weight_codes")
    with pytest.raises(TeacherFormatError, match="layer1.0.conv1 has no usable codes and scale"):
        load_model(bad, parameter="model")


def test_a_pruning_history_that_does_not_fit_is_one_line(quantized: Path, tmp_path: Path) -> None:
    from pucli.errors import DataError

    record = json.loads(safe_open(str(quantized), framework="pt").metadata()[COMPRESSION_KEY])
    record["pruning"] = {"history": [["layer9.conv", True, [0]]], "ratio": 0.5, "importance": "group-norm",
                         "input_size": [1, 28, 28]}
    bad = rewrite(quantized, tmp_path / "history.safetensors", compression=record)
    with pytest.raises(DataError, match="pruning history does not fit"):
        load_model(bad, parameter="model")
