"""calib_data/: the committed slice matches its MANIFEST, and loading checks what it promises."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge_sparse import quantize
from edge_sparse.data import sha256_array
from edge_sparse.errors import EdgeSparseError


def test_committed_calibration_matches_manifest():
    d = quantize.calib_dir()
    manifest = json.loads((d / "MANIFEST.json").read_text())["fashion-mnist"]
    with np.load(d / manifest["file"]) as z:
        x, y = z["x"], z["y"]
    assert len(x) == manifest["count"] >= 500
    assert list(x.shape[1:]) == manifest["shape"] and str(x.dtype) == manifest["dtype"]
    assert sha256_array(x) == manifest["sha256_x"]
    counts = {str(int(c)): int(n) for c, n in zip(*np.unique(y, return_counts=True))}
    assert counts == manifest["class_counts"] and len(counts) == 10
    assert max(counts.values()) - min(counts.values()) <= 1  # class-balanced
    assert manifest["split"] == "train" and manifest["command"].startswith("edge-sparse calib")


def test_calibration_comes_from_train_split_only():
    from edge_sparse import data

    s = data.load("fashion-mnist", seed=0)
    x = quantize.load("fashion-mnist", hwc=(28, 28, 1), num_classes=10)
    test_set = {t.tobytes() for t in s.test.x}
    val_set = {t.tobytes() for t in s.val.x}
    assert not any(c.tobytes() in test_set or c.tobytes() in val_set for c in x)


def test_calibration_never_overlaps_another_seeds_validation_split():
    """The committed slice was drawn for seed 0; seed 1's validation slice holds some of it (44 of 520 when
    this was found). What calibrates is the slice less those images, for any seed."""
    from edge_sparse import data

    x = quantize.load("fashion-mnist", hwc=(28, 28, 1), num_classes=10)
    s = data.load("fashion-mnist", seed=1)
    val_set = {t.tobytes() for t in s.val.x}
    overlap = sum(c.tobytes() in val_set for c in x)
    assert overlap > 0  # the problem is real for this seed
    kept = quantize.drop_held_out(x, s)
    assert len(kept) == len(x) - overlap and not any(c.tobytes() in val_set for c in kept)


def test_calibration_validation(tmp_path):
    src = quantize.calib_dir()
    shutil.copytree(src, tmp_path / "c")
    d = tmp_path / "c"
    with pytest.raises(EdgeSparseError, match=r"shape \(28, 28, 1\).*\(32, 32, 3\)"):
        quantize.load("fashion-mnist", hwc=(32, 32, 3), num_classes=10, directory=d)
    with pytest.raises(EdgeSparseError, match="classes"):
        quantize.load("fashion-mnist", hwc=(28, 28, 1), num_classes=12, directory=d)
    with np.load(d / "fashion-mnist.npz") as z:
        x, y = z["x"].copy(), z["y"].copy()
    x[0, 0, 0, 0] ^= 0xFF
    np.savez_compressed(d / "fashion-mnist.npz", x=x, y=y)
    with pytest.raises(EdgeSparseError, match="MANIFEST"):
        quantize.load("fashion-mnist", hwc=(28, 28, 1), num_classes=10, directory=d)
    np.savez_compressed(d / "fashion-mnist.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(EdgeSparseError, match="uint8"):
        quantize.load("fashion-mnist", hwc=(28, 28, 1), num_classes=10, directory=d)
    assert quantize.load("cifar10", hwc=(32, 32, 3), num_classes=10, directory=d) is None


def test_calib_command_writes_same_format(tmp_path, cifar10_dir):
    from edge_sparse.cli import main

    assert main(["calib", "--dataset", "cifar10", "--data-dir", str(cifar10_dir), "--count", "10",
                 "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "MANIFEST.json").read_text())["cifar10"]
    assert m["count"] == 10 and m["shape"] == [32, 32, 3] and m["split"] == "train"
    assert sum(m["class_counts"].values()) == 10
    # foolbox's 20 CIFAR-10 samples hold no bird (2) or deer (4): loading must say so
    with pytest.raises(EdgeSparseError, match=r"classes \[2, 4\] have no calibration image"):
        quantize.load("cifar10", hwc=(32, 32, 3), num_classes=10, directory=tmp_path, min_count=10)
    with pytest.raises(EdgeSparseError, match="at least 100"):
        quantize.load("cifar10", hwc=(32, 32, 3), num_classes=10, directory=tmp_path)
