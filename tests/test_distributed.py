"""Runs launched by torchrun (pucli.distributed): two CPU processes with gloo give the one-process results.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m pucli ...``
on tiny images and a tiny teacher, one thread per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_png
from typer.testing import CliRunner

from pucli import distributed
from pucli.checkpoints import load_model
from pucli.cli import app
from pucli.data.manifest import read_expanded_set, write_expanded_set
from pucli.kd.distill import DistillConfig, TrainingInterrupted, distill
from pucli.kd.expand import build_expanded_set

RUN = ["--workers", "0", "--threads", "1", "-q"]


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``pucli args...`` in ``processes`` processes (gloo on the CPU), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "pucli", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.parametrize(("count", "batch_size", "world"), [(40, 8, 2), (41, 8, 2), (7, 8, 2), (100, 16, 3), (5, 1, 8)])
def test_batch_blocks_cover_the_pool_once_in_whole_batches(count: int, batch_size: int, world: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    blocks = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        blocks.append(distributed.batch_block(count, batch_size))
    assert blocks[0][0] == 0 and blocks[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(start % batch_size == 0 or start == count for start, _ in blocks)


def test_one_process_helpers_are_no_ops() -> None:
    index, rows = torch.arange(3), torch.randn(3, 2)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather_rows(index, rows) == (index, rows)
    assert distributed.gather_objects("x") == ["x"] and distributed.broadcast_object(5) == 5
    assert torch.equal(distributed.batch_share(index), index)


@pytest.fixture
def select_inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path]) -> list[str]:
    pool = make_pool("pool", count=37)
    (pool / "part0" / "broken.png").write_bytes(b"not an image")  # skipped, and reported once
    return ["--positive", str(make_class_folder("pos", per_class=2)), "--unlabeled", str(pool),
            "--teacher", str(tiny_teacher), "--prior", "0.3", "--epochs", "2", "--ensemble", "2",
            "--batch-size", "8", "--all", "--no-cache", *RUN]


def test_torchrun_select_writes_the_index_of_one_process(select_inputs: list[str], tmp_path: Path) -> None:
    one = CliRunner().invoke(app, ["select", *select_inputs, "--out", str(tmp_path / "one.tsv")])
    assert one.exit_code == 0, one.output
    torchrun("select", *select_inputs, "--out", str(tmp_path / "two.tsv"))

    assert (tmp_path / "two.tsv").read_bytes() == (tmp_path / "one.tsv").read_bytes()
    reports = [json.loads((tmp_path / f"{name}.report.json").read_text()) for name in ("one", "two")]
    assert reports[1]["counts"] == reports[0]["counts"] and reports[1]["counts"]["skipped"] == 1
    assert reports[1]["results"]["risks_per_epoch"] == reports[0]["results"]["risks_per_epoch"]


def test_torchrun_expand_writes_the_soft_targets_of_one_process(select_inputs: list[str], tiny_teacher: Path,
                                                                tmp_path: Path) -> None:
    runner = CliRunner()
    index = tmp_path / "index.tsv"
    assert runner.invoke(app, ["select", *select_inputs, "--out", str(index)]).exit_code == 0
    positive = select_inputs[select_inputs.index("--positive") + 1]
    common = ["--positive", positive, "--index", str(index), "--teacher", str(tiny_teacher), "--batch-size", "4", *RUN]
    one = runner.invoke(app, ["expand", *common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    torchrun("expand", *common, "--out", str(tmp_path / "two"))

    first, second = read_expanded_set(tmp_path / "one"), read_expanded_set(tmp_path / "two")
    assert second.paths == first.paths
    assert torch.equal(second.soft_targets, first.soft_targets)


def test_torchrun_distill_resumes_a_one_process_checkpoint_and_follows_its_losses(tiny_teacher: Path,
                                                                                  tmp_path: Path) -> None:
    teacher = load_model(tiny_teacher)
    paths = [write_png(tmp_path / "images" / f"{i:03d}.png", seed=i) for i in range(24)]
    targets = torch.softmax(torch.randn(24, 3, generator=torch.Generator().manual_seed(0)) * 2, dim=1)
    (tmp_path / "set").mkdir()
    data = write_expanded_set(build_expanded_set(
        paths=paths, origins=["unlabeled"] * 24, labels=[-1] * 24, scores=[1.0] * 24, soft_targets=targets,
        temperature=1.0, teacher_digest=teacher.digest, class_names=["0", "1", "2"],
    ), tmp_path / "set")
    # The CLI's defaults otherwise (robust KD); a checkpoint every epoch, so epoch 2 is on disk.
    config = DistillConfig(epochs=6, batch_size=8, lr=0.05, checkpoint_interval=0.0)
    torch.set_num_threads(1)
    reference = distill(teacher, read_expanded_set(data), "lenet5_half", config=config,
                        checkpoint_path=tmp_path / "reference.ckpt.pt")

    def stop_in_epoch_3(stage: str, completed: int, total: int | None, **metrics: float) -> None:
        if metrics.get("epoch") == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "student.ckpt.pt"
    with pytest.raises(TrainingInterrupted):
        distill(teacher, read_expanded_set(data), "lenet5_half", config=config, checkpoint_path=checkpoint,
                progress=stop_in_epoch_3)

    done = torchrun("distill", str(tiny_teacher), "--data", str(data), "--student", "lenet5_half",
                    "--out", str(tmp_path / "student.safetensors"), "--epochs", "6", "--batch-size", "8",
                    "--lr", "0.05", "--checkpoint-interval", "0", "--resume", "--json", *RUN)
    summary = json.loads(done.stdout)
    assert summary["resumed_from"] == 2 and summary["epochs"] == 6
    losses = [epoch["loss"] for epoch in summary["history"]]
    assert losses[-1] < losses[0]
    # Each rank trains on half of every batch; DDP's mean gradient is that of the whole batch.
    assert losses == pytest.approx([h.loss for h in reference.history], rel=1e-4)
    assert (tmp_path / "student.safetensors").is_file()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 6
    assert dataclasses.asdict(reference.history[0])["images"] == summary["history"][0]["images"]


_GRAPH_SCRIPT = '''
import sys, torch
import pucli.pu.neighbors
from pucli import distributed
from pucli.pu.neighbors import pool_graph

distributed.setup(torch.device("cpu"))
pucli.pu.neighbors.BLOCK_ELEMENTS = 9 * 61  # 9 rows per block: 7 blocks, split 4 / 3 between the ranks
descriptors = torch.randn(61, 5, generator=torch.Generator().manual_seed(0))
graph = pool_graph(descriptors if distributed.is_main() else None, neighbors=4, seed=0, device=torch.device("cpu"),
                   use_cache=False, progress=lambda *a, **k: None)
if distributed.is_main():
    expected = pucli.pu.neighbors.knn_graph(pucli.pu.neighbors.graph_features(descriptors), 4)
    assert graph is not None and torch.equal(graph.neighbors, expected), "graph differs from one process"
    open(sys.argv[1], "w").write("ok")
else:
    assert graph is None
'''


def test_torchrun_ranks_share_the_graph_search_and_rank_0_gets_the_one_process_graph(tmp_path: Path) -> None:
    script = tmp_path / "graph_ranks.py"
    script.write_text(_GRAPH_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "result")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "result").read_text() == "ok"
