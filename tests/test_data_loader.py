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
        if not m.training:  # fit's one eval forward on a zero image (bn_l1's look at the graph) is not a step
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 5 else out

    m.forward = forward
    with pytest.raises(EdgeSparseError, match=r"training diverged: loss is nan at epoch 1, step 5 \("):
        fit(m, fmnist_small, TrainConfig(epochs=1, batch_size=8, augment="none"), progress=False)


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


# --------------------------------------------------------------------------- folder datasets through workers

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_sparse import data  # noqa: E402


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory):
    """200 real JPEGs: Fashion-MNIST images upsampled to 36 px RGB, 20 per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    train, _, _ = data.load_fashion_mnist()
    for c in range(10):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(train.y == c)[:20]):
            Image.fromarray(train.x[i, ..., 0]).resize((36, 36), Image.BILINEAR).convert("RGB").save(d / f"{k:02d}.jpg",
                                                                                                   quality=90)
    return root


def _fit_folder(root, workers, tmp=None, **kw):
    sp = data.load("folder", root, seed=0, image_size=32, workers=workers)
    m = _tiny(c=3, size=32)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, augment="crop_flip", seed=1)
    hist = fit(m, sp, cfg, progress=False, ckpt_dir=tmp, **kw)
    return m, hist, sp


@pytest.fixture(scope="module")
def main_process_run(jpeg_folder):
    """The reference: 2 epochs decoded in the main process (workers=0)."""
    return _fit_folder(jpeg_folder, 0)


def test_folder_trains_bit_identically_with_0_and_2_workers(jpeg_folder, main_process_run):
    a, ha, sp = main_process_run
    b, hb, _ = _fit_folder(jpeg_folder, 2)
    assert len(sp.train) == 162 and np.isfinite(ha[-1]["loss"])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [dict(h, seconds=0) for h in ha] == [dict(h, seconds=0) for h in hb]
    # the streamed, worker-decoded evaluation equals the main-process decode of the same files
    from edge_sparse.train import predict

    direct = data.ImageSet(np.stack([data.load_image(f, 32) for f in sp.train.files]), sp.train.y)
    assert np.array_equal(predict(a, sp.train, sp.mean, sp.std, batch_size=50), predict(a, direct, sp.mean, sp.std))


def test_resume_with_workers_is_exact(jpeg_folder, main_process_run, tmp_path):
    ref, _, sp = main_process_run
    steps_per_epoch = -(-len(sp.train) // 32)
    with pytest.raises(KeyboardInterrupt):
        _fit_folder(jpeg_folder, 2, tmp_path, stop_after_steps=steps_per_epoch + 2)
    resumed, hist, _ = _fit_folder(jpeg_folder, 2, tmp_path, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2]
    for va, vb in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(va, vb)


@pytest.fixture
def bad_folder(jpeg_folder, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(jpeg_folder, root)
    good = root / "train" / "class3" / "00.jpg"
    (root / "train" / "class3" / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "train" / "class5" / "empty.jpg").write_bytes(b"")
    (root / "train" / "class7" / "folder.jpg").mkdir()
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_is_one_line_naming_it(bad_folder, tmp_path, capfd, monkeypatch, workers):
    from edge_sparse import cli

    monkeypatch.setattr(data, "_MIN_FOR_WORKERS", 0)  # 200 images: through the workers all the same

    rc = cli.main(["build", "--target", "host", "--dataset", "folder", "--data-dir", str(bad_folder), "--image-size", "32",
                   "--workers", str(workers), "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache")])
    err = [l for l in capfd.readouterr().err.strip().splitlines() if not l.startswith("edge_sparse build:")]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "cannot read image" in err[0] and "--skip-bad-images" in err[0]
    assert any(n in err[0] for n in ("truncated.jpg", "empty.jpg", "folder.jpg")), err[0]
    assert "Traceback" not in err[0]


def test_skip_bad_images_counts_and_leaves_them_out(bad_folder, jpeg_folder, monkeypatch):
    monkeypatch.setattr(data, "_MIN_FOR_WORKERS", 0)
    sp = data.load("folder", bad_folder, seed=0, image_size=32, workers=2, skip_bad_images=True)
    assert len(sp.skipped) == 3
    assert sorted(s.split(":")[0].rsplit("/", 1)[1] for s in sp.skipped) == ["empty.jpg", "folder.jpg", "truncated.jpg"]
    assert len(sp.train) + len(sp.val) + len(sp.test) == 200
    kept = set(sp.train.files) | set(sp.val.files) | set(sp.test.files)
    assert not any(f.endswith(("empty.jpg", "folder.jpg", "truncated.jpg")) for f in kept)
    # the same splits as the folder without the bad files: skipping them reshuffles nothing
    clean = data.load("folder", jpeg_folder, seed=0, image_size=32, workers=0)
    rel = lambda files, root: [str(Path(f).relative_to(root)) for f in files]  # noqa: E731
    assert rel(sp.train.files, bad_folder) == rel(clean.train.files, jpeg_folder)
    assert rel(sp.test.files, bad_folder) == rel(clean.test.files, jpeg_folder)


def test_decode_once_is_the_same_pixels_and_is_reused(jpeg_folder, tmp_path, monkeypatch):
    sp = data.load("folder", jpeg_folder, seed=0, image_size=32, workers=2)
    monkeypatch.setattr(data, "_MIN_FOR_WORKERS", 0)
    dec, note = data.decode_once_if_room(sp, tmp_path / "decoded")
    assert "decoded once" in note and len(list((tmp_path / "decoded").glob("*.u8"))) == 3
    for name in ("train", "val", "test"):
        s, d = getattr(sp, name), getattr(dec, name)
        assert np.array_equal(d.x, np.stack([data.load_image(f, 32) for f in s.files])) and np.array_equal(d.y, s.y)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "decoded").glob("*.u8")}
    data.decode_once(sp, tmp_path / "decoded")  # the same files: read back, not decoded again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "decoded").glob("*.u8")} == stamp
    _, note = data.decode_once_if_room(sp, tmp_path / "decoded", max_share=1e-12)
    assert "decoded at every read" in note


def test_cli_flags_reach_the_build_config():
    import argparse

    from edge_sparse import cli

    p = argparse.ArgumentParser()
    cli._build_args(p)
    c = cli._config(p.parse_args(["--target", "rpi4", "--workers", "3", "--skip-bad-images"]))
    assert (c.workers, c.skip_bad_images, c.train.precision, c.finetune.precision) == (3, True, "fp32", "fp32")
    with pytest.raises(EdgeSparseError, match="--workers must be >= 0"):
        cli._config(p.parse_args(["--target", "rpi4", "--workers", "-1"]))


_AFTER_TF = """
import sys, numpy as np
import tensorflow as tf
from edge_sparse import data
tf.constant(np.ones((64, 64), np.float32)) @ tf.constant(np.ones((64, 64), np.float32))  # TF's thread pools are up
s = data.load("folder", sys.argv[1], seed=0, image_size=32, workers=2).train
batches = [np.arange(i, min(i + 32, len(s))) for i in range(0, len(s), 32)]
with data.Reader(s, persistent=True) as read:
    got = np.concatenate([x.numpy() for x in read(batches)])
direct = np.stack([data.load_image(f, 32) for f in s.files])
assert np.array_equal(got, direct)
print("workers ok", len(got))
"""


def test_workers_start_after_tensorflow_has_run(jpeg_folder):
    """The verify stage runs TensorFlow, then reads folders through forked DataLoader workers: they must start, decode
    the same pixels as the main process, and end (in a child, bounded, so a deadlock fails the test, not the suite)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _AFTER_TF, str(jpeg_folder)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "workers ok 162" in r.stdout, r.stderr[-1500:]
