"""A real `kill -9` of a build, during training and again during export: the re-run resumes from the last
epoch checkpoint / the finished stages and ships the same bundle as a build that was never interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["build", "--target", "rpi4", "--quick", "--model", "tiny_resnet", "--epochs", "3", "--finetune-epochs", "1",
        "--no-dense-reference"]


def _cmd(tmp: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "edge_sparse.cli", *ARGS, "--out", str(tmp / name / "dist"),
            "--cache", str(tmp / name / "cache")]


def _run_until(cmd: list[str], marker: str, timeout: float = 600) -> str:
    """Start the build, SIGKILL it once `marker` appears on its stderr; return what it printed."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, t0 = [], time.time()
    try:
        for line in p.stderr:
            seen.append(line)
            if marker in line:
                os.kill(p.pid, signal.SIGKILL)
                break
            assert time.time() - t0 < timeout, "the build never reached the marker"
    finally:
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, ("".join(seen))[-2000:]
    return "".join(seen)


@pytest.mark.slow
def test_kill_9_during_training_and_export_then_resume(tmp_path):
    env_ok = subprocess.run(_cmd(tmp_path, "clean"), capture_output=True, text=True, timeout=1200)
    assert env_ok.returncode == 0, env_ok.stderr[-2000:]
    cmd = _cmd(tmp_path, "killed")
    _run_until(cmd, "epoch 2/3")  # killed during the third warm-up epoch
    cache = tmp_path / "killed" / "cache"
    assert not any(p.name.startswith("train-") and (p / "stage.json").exists() for p in cache.iterdir())
    out = _run_until(cmd, "[5/8] export ...")  # resumed training, then killed while exporting
    assert "resuming from the checkpoint after epoch" in out and "  epoch 1/3:" not in out, out[-2000:]  # <= 1 epoch lost
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train: cached" in r.stderr and "export ..." in r.stderr
    assert not list(cache.glob(".*.tmp"))
    for f in ("model.onnx", "model_fp32.onnx", "eval.npz"):  # (model.tflite embeds per-bundle metadata paths)
        assert (tmp_path / "killed" / "dist" / "rpi4" / f).read_bytes() == \
               (tmp_path / "clean" / "dist" / "rpi4" / f).read_bytes(), f
    import json

    acc = [json.loads((tmp_path / n / "dist" / "rpi4" / "metadata.json").read_text())["accuracy"] for n in ("killed", "clean")]
    assert acc[0] == acc[1]
