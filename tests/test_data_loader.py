"""The training loop's input path: no per-step host syncs (divergence still named), bf16 only on CUDA, folder
datasets through DataLoader workers with the same batches as the main process, bad images named or skipped."""
from __future__ import annotations

import pytest
import torch

from edge_sparse import models
from edge_sparse.config import TrainConfig
from edge_sparse.errors import EdgeSparseError
from edge_sparse.train import fit


def _tiny(c=1, size=28, seed=0):
    torch.manual_seed(seed)
    return models.create("tiny_resnet", in_channels=c, num_classes=10, input_size=size)


def test_divergence_names_the_first_bad_step_between_checks(fmnist_small):
    m = _tiny()
    calls = {"n": 0}
    plain = m.forward

    def forward(x):  # the 5th training step's loss is NaN (checks run every 16 steps and at the epoch's end)
        out = plain(x)
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 5 else out

    m.forward = forward
    with pytest.raises(EdgeSparseError, match=r"training diverged: loss is nan at epoch 1, step 5 \("):
        fit(m, fmnist_small, TrainConfig(epochs=1, batch_size=32, augment="none"), progress=False)


def test_bf16_is_refused_on_the_cpu(fmnist_small):
    with pytest.raises(EdgeSparseError, match="--precision bf16 runs on CUDA only"):
        fit(_tiny(), fmnist_small, TrainConfig(epochs=1, precision="bf16"), progress=False)
    with pytest.raises(EdgeSparseError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


def test_bf16_on_the_cpu_is_one_cli_line(tmp_path, capsys):
    from edge_sparse import cli

    rc = cli.main(["build", "--target", "host", "--precision", "bf16", "--out", str(tmp_path / "dist"),
                   "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--precision bf16 runs on CUDA only" in err[0], err
