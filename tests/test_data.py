"""Loaders on real data: Fashion-MNIST (the embedded default), CIFAR-10/100 python directories and
image folders built from foolbox's real images; the restricted unpickler; deterministic splits."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_sparse import data
from edge_sparse.errors import EdgeSparseError


def test_fashion_mnist_full_and_splits():
    tr, te, classes = data.load_fashion_mnist()
    assert tr.x.shape == (60000, 28, 28, 1) and te.x.shape == (10000, 28, 28, 1)
    assert tr.x.dtype == np.uint8 and len(classes) == 10
    assert np.bincount(tr.y).tolist() == [6000] * 10
    s = data.load("fashion-mnist", seed=0)
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    assert s.input_shape == (1, 28, 28)
    # val is class-balanced and disjoint from train (compare the images themselves)
    assert np.bincount(s.val.y).tolist() == [600] * 10
    tr_hash = {x.tobytes() for x in s.train.x[:5000]}
    assert not any(x.tobytes() in tr_hash for x in s.val.x[:500] if (x > 0).sum() > 50)


def test_splits_are_deterministic_by_seed():
    a = data.load("fashion-mnist", seed=3, limit_train=500, limit_eval=100)
    b = data.load("fashion-mnist", seed=3, limit_train=500, limit_eval=100)
    c = data.load("fashion-mnist", seed=4, limit_train=500, limit_eval=100)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.val.y, b.val.y)
    assert not np.array_equal(a.train.x, c.train.x)
    assert a.mean == b.mean and 0 < a.mean[0] < 1


def test_fashion_mnist_corrupt_copy_is_refused(tmp_path, monkeypatch):
    src = data.FASHION_MNIST_DIR
    for f in data.FASHION_MNIST_FILES:
        shutil.copyfile(src / f, tmp_path / f)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    flipped = raw[:100] + bytes([(raw[100] + 1) % 10]) + raw[101:]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(flipped))
    monkeypatch.setenv("EDGE_SPARSE_DATA", str(tmp_path))
    with pytest.raises(EdgeSparseError, match="sha256"):
        data.load("fashion-mnist")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(EdgeSparseError, match="t10k-images"):
        data.load("fashion-mnist")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(EdgeSparseError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist")


def test_cifar10_python_directory(cifar10_dir, foolbox_images):
    s = data.load("cifar10", cifar10_dir, seed=0, val_fraction=0.1)
    assert s.classes[0] == "airplane" and len(s.classes) == 10
    assert s.input_shape == (3, 32, 32) and s.train.x.dtype == np.uint8
    # pixels survive the pickle -> NHWC round trip exactly
    from PIL import Image

    f = sorted(foolbox_images.glob("cifar10_*.png"))[0]
    ref = np.asarray(Image.open(f).convert("RGB"))
    assert any(np.array_equal(ref, x) for x in s.test.x)


def test_cifar100_python_directory(cifar100_dir):
    s = data.load("cifar100", cifar100_dir, seed=0)
    assert len(s.classes) == 100 and s.input_shape == (3, 32, 32)
    assert set(s.test.y.tolist()) <= set(range(100))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/edge_sparse_pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    Path("/tmp/edge_sparse_pwned").unlink(missing_ok=True)
    with pytest.raises(EdgeSparseError) as e:
        data.load("cifar10", d)
    assert "refused to unpickle" in str(e.value) and "system" in str(e.value) and "data_batch_1" in str(e.value)
    assert not Path("/tmp/edge_sparse_pwned").exists()


def test_cifar_wrong_shapes_and_missing(tmp_path, cifar10_dir):
    with pytest.raises(EdgeSparseError, match="does not exist"):
        data.load("cifar10", tmp_path / "nope")
    d = tmp_path / "c"
    shutil.copytree(cifar10_dir, d)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(EdgeSparseError, match=r"data_batch_2.*\(N, 3072\)"):
        data.load("cifar10", d)
    with open(d / "data_batch_2", "wb") as f:  # labels out of range: refused at load, not deep in training
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 12, 2]}, f, protocol=2)
    with pytest.raises(EdgeSparseError, match=r"data_batch_2: label 12 of image 1 is outside 0..9"):
        data.load("cifar10", d)
    (d / "test_batch").unlink()
    with pytest.raises(EdgeSparseError):
        data.load("cifar10", d)


def test_image_folder(imagenet_folder):
    s = data.load("folder", imagenet_folder, seed=0, image_size=48)
    assert s.input_shape == (3, 48, 48)
    assert len(s.classes) == len({p.name for p in (imagenet_folder / "train").iterdir()})
    img = s.train.images([0])
    assert img.shape == (1, 48, 48, 3) and img.dtype == np.uint8 and img.std() > 5


def test_folder_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(EdgeSparseError, match="no class sub-directories"):
        data.load("folder", tmp_path)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EdgeSparseError, match="too small to split"):
        data.load("folder", tmp_path, image_size=32)
    for i in range(9):
        (tmp_path / "train" / "cat" / f"b{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EdgeSparseError, match=r"\.jpg: cannot read image"):
        data.load("folder", tmp_path, image_size=32)


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(EdgeSparseError, match="valid: fashion-mnist, cifar10, cifar100, folder"):
        data.load("mnist-3d")
    with pytest.raises(EdgeSparseError, match="--data-dir"):
        data.load("cifar10")
