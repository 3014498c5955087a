"""Datasets: Fashion-MNIST (default), CIFAR-10/100 python directories, ImageNet-style image folders.

In:  a dataset name and (except for the default) the user's directory.
Out: `Splits` of uint8 HWC images with labels: train / val / test, split deterministically by seed.
     The test split is never used for training, calibration or model selection.
Run: `edge-sparse calib --dataset cifar10 --data-dir ~/data/cifar-10-batches-py` makes a
     calibration slice from the train split.

Images stay uint8 until `to_tensor` normalises them with the dataset's mean/std, so the same raw
pixels go into `eval.npz` and the on-device harness applies the same preprocessing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from edge_sparse.errors import EdgeSparseError

DatasetName = Literal["fashion-mnist", "cifar10", "cifar100", "folder"]
DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "folder")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# sha256 of the *decompressed* idx files, so a re-compressed copy verifies too.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W, C) with int64 labels; or, for folders, file paths loaded lazily."""

    x: Optional[np.ndarray]  # uint8 NHWC, or None when `files` is used
    y: np.ndarray  # int64 labels
    files: Optional[list[str]] = None  # image paths (folder datasets), loaded on access
    size: Optional[int] = None  # square side the folder images are resized/cropped to

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self.x is not None:
            return self.x[idx]
        return np.stack([load_image(self.files[i], self.size) for i in idx])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        if self.x is not None:
            return ImageSet(self.x[idx], self.y[idx])
        return ImageSet(None, self.y[idx], [self.files[i] for i in idx], self.size)

    def materialize(self) -> "ImageSet":
        return self if self.x is not None else ImageSet(self.images(np.arange(len(self))), self.y)


@dataclass
class Splits:
    """A dataset ready for the pipeline: splits plus what preprocessing needs to know."""

    name: str  # dataset name
    classes: tuple[str, ...]  # label names in output order
    train: ImageSet
    val: ImageSet  # for model selection and the sparsity search
    test: ImageSet  # held out: final accuracy and eval.npz only
    mean: tuple[float, ...]  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the torch model sees it."""
        h, w, c = self.train.images([0]).shape[1:]
        return (c, h, w)


# --------------------------------------------------------------------------- Fashion-MNIST

def _fashion_dir() -> Path:
    env = os.environ.get("EDGE_SPARSE_DATA")
    return Path(env) if env else FASHION_MNIST_DIR


def _read_idx(path: Path, expected_sha256: str, expected_len: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise EdgeSparseError(
            f"Fashion-MNIST file {path} is missing; install Debian's package with "
            f"`apt-get install dataset-fashion-mnist`, or set EDGE_SPARSE_DATA to a directory holding "
            f"{', '.join(FASHION_MNIST_FILES)}"
        ) from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise EdgeSparseError(f"Fashion-MNIST file {path} is not a valid gzip file ({e}); re-download it") from None
    if len(raw) != expected_len:
        raise EdgeSparseError(
            f"Fashion-MNIST file {path} holds {len(raw)} bytes once decompressed, expected {expected_len}; "
            f"the copy is truncated or not Fashion-MNIST"
        )
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise EdgeSparseError(
            f"Fashion-MNIST file {path} fails its sha256 check (expected {expected_sha256[:16]}… of the "
            f"decompressed file); the copy is corrupt or not Fashion-MNIST"
        )
    magic, = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise EdgeSparseError(f"Fashion-MNIST file {path} has a bad idx header (magic {magic:#x})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: Optional[Path] = None) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    d = Path(data_dir) if data_dir else _fashion_dir()
    arrays = {name: _read_idx(d / name, sha, n) for name, (sha, n) in FASHION_MNIST_FILES.items()}
    xtr = arrays["train-images-idx3-ubyte.gz"][..., None]
    ytr = arrays["train-labels-idx1-ubyte.gz"].astype(np.int64)
    xte = arrays["t10k-images-idx3-ubyte.gz"][..., None]
    yte = arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64)
    if ytr.max() >= len(FASHION_MNIST_CLASSES) or yte.max() >= len(FASHION_MNIST_CLASSES):
        raise EdgeSparseError(f"Fashion-MNIST labels in {d} fall outside 0..9; the files are not Fashion-MNIST")
    return ImageSet(np.ascontiguousarray(xtr), ytr), ImageSet(np.ascontiguousarray(xte), yte), FASHION_MNIST_CLASSES


# --------------------------------------------------------------------------- CIFAR (pickles)

class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, bytes, numbers and numpy arrays; refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("copyreg", "_reconstructor"),  # only with the two types below
        ("builtins", "object"),
    }

    def __init__(self, f, path: str):
        super().__init__(f, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise EdgeSparseError(
            f"{self._path}: refused to unpickle {module}.{name}; a CIFAR batch holds only dicts, lists, "
            f"bytes, numbers and numpy arrays (this file may carry code)"
        )


def safe_unpickle(path: Path) -> object:
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except EdgeSparseError:
        raise
    except Exception as e:  # truncated / not a pickle
        raise EdgeSparseError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if isinstance(d, dict) and k in d:
            return d[k]
    raise EdgeSparseError(f"{path}: CIFAR batch has no {key!r} entry")


def _cifar_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise EdgeSparseError(f"CIFAR batch {path} is missing; point --data-dir at the extracted python-format directory")
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise EdgeSparseError(f"{path}: CIFAR batch must be a dict, got {type(d).__name__}")
    x = np.asarray(_get(d, "data", path))
    y = np.asarray(_get(d, label_key, path), dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise EdgeSparseError(
            f"{path}: CIFAR data must be uint8 (N, 3072) with N labels, got {x.dtype} {x.shape} and {len(y)} labels"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = int(np.flatnonzero((y < 0) | (y >= classes))[0])
        raise EdgeSparseError(f"{path}: label {int(y[bad])} of image {bad} is outside 0..{classes - 1} "
                              f"({'CIFAR-10' if classes == 10 else 'CIFAR-100'} has {classes} classes)")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y


def _names(d: object, key: str, path: Path) -> tuple[str, ...]:
    names = _get(d, key, path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(data_dir: Path):
    d = Path(data_dir)
    xs, ys = zip(*[_cifar_batch(d / f"data_batch_{i}", "labels", 10) for i in range(1, 6)])
    xte, yte = _cifar_batch(d / "test_batch", "labels", 10)
    meta = d / "batches.meta"
    classes = _names(safe_unpickle(meta), "label_names", meta) if meta.is_file() else CIFAR10_CLASSES
    return ImageSet(np.concatenate(xs), np.concatenate(ys)), ImageSet(xte, yte), classes


def load_cifar100(data_dir: Path):
    d = Path(data_dir)
    xtr, ytr = _cifar_batch(d / "train", "fine_labels", 100)
    xte, yte = _cifar_batch(d / "test", "fine_labels", 100)
    meta = d / "meta"
    classes = _names(safe_unpickle(meta), "fine_label_names", meta) if meta.is_file() else tuple(str(i) for i in range(100))
    return ImageSet(xtr, ytr), ImageSet(xte, yte), classes


# --------------------------------------------------------------------------- image folders

def load_image(path: str, size: Optional[int]) -> np.ndarray:
    """Decode one image to uint8 RGB HWC; resize the shorter side to size*8/7 and centre-crop `size`."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size:
                short = round(size * 8 / 7)
                w, h = im.size
                s = short / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise EdgeSparseError(f"{path}: cannot read image ({e})") from None


def _scan_folder(root: Path, classes: Optional[tuple[str, ...]] = None):
    if not root.is_dir():
        raise EdgeSparseError(f"image folder {root} does not exist; expected {root}/<class>/*.jpg")
    found = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if classes is None:
        classes = found
    if not classes:
        raise EdgeSparseError(f"image folder {root} has no class sub-directories; expected {root}/<class>/*.jpg")
    extra = set(found) - set(classes)
    if extra:
        raise EdgeSparseError(f"{root} has classes not in train/: {', '.join(sorted(extra))}")
    files, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((root / c).glob("*")) if (root / c).is_dir() else []:
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(p))
                labels.append(i)
    if not files:
        raise EdgeSparseError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, np.asarray(labels, dtype=np.int64), classes


def load_folder(data_dir: Path, size: int):
    d = Path(data_dir)
    files, y, classes = _scan_folder(d / "train")
    train = ImageSet(None, y, files, size)
    test = None
    for name in ("test", "val"):
        if (d / name).is_dir():
            f, yy, _ = _scan_folder(d / name, classes)
            test = ImageSet(None, yy, f, size)
            break
    return train, test, classes


# --------------------------------------------------------------------------- splits

def _stratified_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n items, as class-balanced as the labels allow, in a seeded order."""
    classes = np.unique(y)
    per = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    out, k = [], 0
    while len(out) < n:
        progressed = False
        for c in classes:
            if k < len(per[c]) and len(out) < n:
                out.append(per[c][k])
                progressed = True
        if not progressed:
            break
        k += 1
    return np.sort(np.asarray(out, dtype=np.int64))


def load(
    name: str,
    data_dir: Optional[str | Path] = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit_train: Optional[int] = None,
    limit_eval: Optional[int] = None,
    image_size: int = 64,
) -> Splits:
    """Load a dataset and split it deterministically by seed.

    `limit_train` / `limit_eval` take class-balanced slices (QUICK builds, tests).
    """
    if name not in DATASETS:
        raise EdgeSparseError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if name != "fashion-mnist" and not data_dir:
        raise EdgeSparseError(f"dataset {name!r} needs --data-dir (DATA_DIR=) pointing at the user's copy")
    if data_dir and not Path(data_dir).is_dir():
        raise EdgeSparseError(f"data directory {data_dir} does not exist")
    if name == "fashion-mnist":
        train, test, classes = load_fashion_mnist(Path(data_dir) if data_dir else None)
    elif name == "cifar10":
        train, test, classes = load_cifar10(Path(data_dir))
    elif name == "cifar100":
        train, test, classes = load_cifar100(Path(data_dir))
    else:
        train, test, classes = load_folder(Path(data_dir), image_size)

    rng = np.random.default_rng(seed)
    if test is None:  # folder without test/: hold out a stratified slice of train
        n_test = max(1, int(round(len(train) * 0.1)))
        te_idx = _stratified_pick(train.y, n_test, rng)
        test = train.subset(te_idx)
        train = train.subset(np.setdiff1d(np.arange(len(train)), te_idx))
    n_val = max(1, int(round(len(train) * val_fraction)))
    va_idx = _stratified_pick(train.y, n_val, rng)
    tr_idx = np.setdiff1d(np.arange(len(train)), va_idx)
    val, train = train.subset(va_idx), train.subset(tr_idx)
    if len(train) < 2 or len(val) < 1 or len(test) < 1:
        raise EdgeSparseError(
            f"dataset {name!r} at {data_dir} is too small to split: {len(train)} train, {len(val)} val, "
            f"{len(test)} test images; it needs at least a few images per class"
        )
    if limit_train:
        train = train.subset(_stratified_pick(train.y, min(limit_train, len(train)), rng))
    if limit_eval:
        val = val.subset(_stratified_pick(val.y, min(limit_eval, len(val)), rng))
        test = test.subset(_stratified_pick(test.y, min(limit_eval, len(test)), rng))
    mean, std = _channel_stats(train, rng)
    return Splits(name, tuple(classes), train, val, test, mean, std)


def _channel_stats(s: ImageSet, rng: np.random.Generator, n: int = 2000):
    idx = np.sort(rng.choice(len(s), size=min(n, len(s)), replace=False))
    x = s.images(idx).astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2)) + 1e-6
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def to_tensor(x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """uint8 NHWC -> normalised float32 NCHW torch tensor."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def normalize_np(x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float], layout: str = "NHWC") -> np.ndarray:
    """uint8 NHWC -> normalised float32, NHWC or NCHW (for the exporters and runtimes)."""
    x = x_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
