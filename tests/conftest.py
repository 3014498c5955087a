"""Shared fixtures: small real data (Fashion-MNIST slices, foolbox's real CIFAR/ImageNet images) and
tiny real models. Nothing here mocks torch, ONNX or TFLite."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
torch.set_num_threads(2)


@pytest.fixture
def targets_copy(tmp_path, monkeypatch):
    """A writable copy of targets/ that the code under test loads instead (EDGE_SPARSE_TARGETS)."""
    d = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", d)
    monkeypatch.setenv("EDGE_SPARSE_TARGETS", str(d))
    return d


@pytest.fixture(scope="session")
def fmnist_small():
    from edge_sparse import data

    return data.load("fashion-mnist", seed=0, limit_train=1200, limit_eval=300)


@pytest.fixture(scope="session")
def foolbox_images() -> Path:
    """Directory of the 20 real CIFAR-10 / CIFAR-100 / ImageNet sample images foolbox ships."""
    try:
        import foolbox  # noqa: F401  (installed --no-deps: only its data files are used)
    except Exception:
        pass
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox (test data) is not installed; `make test` installs it")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    assert d.is_dir(), d
    return d


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory, foolbox_images) -> Path:
    """A real python-format `cifar-10-batches-py` directory made of foolbox's real CIFAR-10 images."""
    files = sorted(foolbox_images.glob("cifar10_*.png"))
    assert files, "foolbox ships cifar10_*.png"
    imgs = np.stack([_png(f) for f in files])  # N,32,32,3
    labels = [int(f.stem.split("_")[-1]) for f in files]
    d = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    d.mkdir()
    flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": flat,
                         b"filenames": [f.name.encode() for f in files]}, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                             "frog", "horse", "ship", "truck")]}, f, protocol=2)
    return d


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory, foolbox_images) -> Path:
    files = sorted(foolbox_images.glob("cifar100_*.png"))
    assert files, "foolbox ships cifar100_*.png"
    imgs = np.stack([_png(f) for f in files])
    labels = [int(f.stem.split("_")[-1]) for f in files]
    d = tmp_path_factory.mktemp("cifar100") / "cifar-100-python"
    d.mkdir()
    flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
    for name in ("train", "test"):
        with open(d / name, "wb") as f:
            pickle.dump({b"fine_labels": labels, b"coarse_labels": [0] * len(labels), b"data": flat}, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}, f, protocol=2)
    return d


@pytest.fixture(scope="session")
def imagenet_folder(tmp_path_factory, foolbox_images) -> Path:
    """train/<class>/*.png from foolbox's real ImageNet images (two copies each, to have a split)."""
    files = sorted(foolbox_images.glob("imagenet_*.jpg"))
    assert files, "foolbox ships imagenet_*.jpg"
    root = tmp_path_factory.mktemp("folder")
    for f in files:
        label = f.stem.split("_")[-1]
        for split, copies in (("train", 3), ("val", 1)):
            c = root / split / f"n{int(label):08d}"
            c.mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                shutil.copyfile(f, c / f"{f.stem}_{k}.png")
    return root


@pytest.fixture(scope="session")
def quick(tmp_path_factory):
    """One QUICK build for rpi4 on real Fashion-MNIST (minutes), shared by the end-to-end tests and the bad-input
    catalogue's harness cases: its bundle, its Build and the cache the other builds reuse."""
    from edge_sparse import pipeline
    from edge_sparse.config import BuildConfig

    d = tmp_path_factory.mktemp("build")
    b = pipeline.run("rpi4", BuildConfig.quick(), out_dir=d / "dist", cache_dir=d / "cache")
    return {"b": b, "dir": d, "bundle": d / "dist" / "rpi4"}
