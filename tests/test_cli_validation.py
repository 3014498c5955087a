"""Bad build flags are refused before any stage runs: exit 2, one line naming the flag, nothing written."""
from __future__ import annotations

import pytest

from edge_sparse.cli import main

from test_bad_inputs import BUILD, CASES

# the catalogue's build-flag rows (tests/test_bad_inputs.py), here held to more: no cache directory at all, no data
# read and nothing trained; plus a user model and weights given by paths that do not exist
BAD_FLAGS = [(c.argv[len(BUILD):], c.words) for c in CASES if c.area == "build flag"] + [
    (["--model", "resnet9000"], "resnet9000"),
    (["--weights", "/nonexistent/w.safetensors"], "--weights /nonexistent/w.safetensors: no such file"),
    (["--no-train"], "--no-train needs --weights"),
    (["--model", "/nonexistent/net.py:make"], "/nonexistent/net.py"),
    (["--robust-n", "-1"], "--robust-n must be >= 0"),
]


@pytest.mark.parametrize("flags, words", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_build_flag_is_refused_up_front(flags, words, tmp_path, capsys, monkeypatch):
    from edge_sparse import data, train

    def ran(*a, **k):
        raise AssertionError("a build stage ran before the bad flag was refused")

    monkeypatch.setattr(data, "load", ran)  # refused before the data is read or anything trained
    monkeypatch.setattr(train, "fit", ran)
    rc = main(["build", "--target", "rpi4", "--quick", "--out", str(tmp_path / "dist"),
               "--cache", str(tmp_path / "cache"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "dist").exists() and not (tmp_path / "cache").exists()


def test_nan_loss_stops_training_naming_epoch_and_recipe(fmnist_small):
    from edge_sparse import models
    from edge_sparse.config import TrainConfig
    from edge_sparse.errors import EdgeSparseError
    from edge_sparse.train import fit

    m = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28)
    with pytest.raises(EdgeSparseError, match=r"training diverged: loss is (nan|inf) at epoch 1.*lr 1e\+06"):
        fit(m, fmnist_small, TrainConfig(epochs=1, lr=1e6, batch_size=64))
    assert m.conv1.weight.is_contiguous()  # trained channels-last, and given back in the default layout even so


_FAILING_NET = """
import os, signal, torch.nn as nn

class Net(nn.Module):  # a forward that fails once it trains: {why}
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
    def forward(self, x):
        if self.training and x.shape[0] > 1:
            {fail}
        return self.fc(self.conv(x).mean((2, 3)))

def make():
    return Net()
"""
_SEGFAULTING_NET = _FAILING_NET.format(why="dies by SIGSEGV, a stand-in for a crash in native code",
                                       fail="os.kill(os.getpid(), signal.SIGSEGV)")
_RAISING_NET = _FAILING_NET.format(why="raises, a stand-in for an error no check of ours foresaw",
                                   fail="raise RuntimeError(\"shape mismatch in\\nthe user's own block\")")


def test_a_signal_death_is_one_line_naming_the_stage(tmp_path):
    """`edge-sparse` runs the CLI in a child; a child killed by a signal is one line naming it and the stage, exit 3."""
    import subprocess
    import sys

    (tmp_path / "net.py").write_text(_SEGFAULTING_NET)
    r = subprocess.run([sys.executable, "-m", "edge_sparse._supervise", "build", "--target", "rpi4", "--quick",
                        "--model", f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "dist"),
                        "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 3, r.stderr[-1500:]
    assert last.startswith("error: the process died by SIGSEGV in the 'train' stage"), last
    assert "Traceback" not in r.stderr and not (tmp_path / "dist").exists()


def test_an_unexpected_exception_is_one_line_with_the_traceback_in_a_file(tmp_path, capsys):
    """Not an EdgeSparseError: still one line (type, message, frame, stage, model), exit 1, the traceback in a file
    that the line names, nothing half-written."""
    import os
    import re

    (tmp_path / "net.py").write_text(_RAISING_NET)
    rc = main(["build", "--target", "rpi4", "--quick", "--model", f"{tmp_path / 'net.py'}:make",
               "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache")])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
    assert rc == 1 and len(err) == 1, err
    line = err[0]
    assert line.startswith("error: unexpected RuntimeError in the 'train' stage of `edge-sparse build` (model "), line
    assert "shape mismatch in the user's own block, at net.py:" in line and "in forward" in line, line
    path = re.search(r"traceback in (\S+)$", line).group(1)
    tb = open(path).read()
    os.unlink(path)
    assert "Traceback (most recent call last)" in tb and "raise RuntimeError" in tb
    assert not (tmp_path / "dist").exists()
