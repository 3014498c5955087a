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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional, Sequence

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


def default_workers() -> int:
    """Decoding processes for folder datasets when --workers is not given: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W, C) with int64 labels; or, for folders, file paths loaded lazily."""

    x: Optional[np.ndarray]  # uint8 NHWC, or None when `files` is used
    y: np.ndarray  # int64 labels
    files: Optional[list[str]] = None  # image paths (folder datasets), loaded on access
    size: Optional[int] = None  # square side the folder images are resized/cropped to
    workers: Optional[int] = None  # processes decoding folder images (None: default_workers(); 0: this process)

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self.x is not None:
            return self.x[idx]
        if len(idx) <= _SMALL_READ:
            return np.stack([_load_or_raise(self.files[i], self.size) for i in idx])
        with Reader(self) as read:
            return np.concatenate([x.numpy() for x in read(np.array_split(idx, -(-len(idx) // _SMALL_READ)))])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        if self.x is not None:
            return ImageSet(self.x[idx], self.y[idx])
        return ImageSet(None, self.y[idx], [self.files[i] for i in idx], self.size, self.workers)

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
    skipped: tuple[str, ...] = ()  # unreadable images left out (--skip-bad-images), each "path: why"

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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise EdgeSparseError(f"{path}: cannot read image ({str(e) or type(e).__name__})") from None


BAD_IMAGE_HINT = "replace or remove it, or pass --skip-bad-images to leave unreadable images out (counted in the report)"


def _load_or_raise(path: str, size: Optional[int]) -> np.ndarray:
    try:
        return load_image(path, size)
    except EdgeSparseError as e:
        raise EdgeSparseError(f"{e}; {BAD_IMAGE_HINT}") from None


# --------------------------------------------------------------------------- batches, decoded by worker processes

_SMALL_READ = 64  # images(): up to this many decode here, more go through the workers in batches of this size
_MIN_FOR_WORKERS = 256  # a pass over fewer images decodes in this process (a worker start costs ~0.1-0.3 s)


class _FolderBatches:
    """Map-style dataset whose key is a whole batch (an index array): a worker decodes one batch per task and
    returns (uint8 NHWC tensor of the readable images, their positions in the batch, "path: why" of the others).
    It never raises: a bad file becomes one error line in the main process, not a worker traceback."""

    def __init__(self, files: list[str], size: Optional[int]):
        self.files, self.size = files, size

    def __getitem__(self, idx: np.ndarray):
        import torch

        ims, keep, bad = [], [], []
        for k, i in enumerate(idx):
            try:
                ims.append(load_image(self.files[i], self.size))
                keep.append(k)
            except EdgeSparseError as e:
                bad.append(str(e))
            except Exception as e:  # anything else a decoder may raise: still one line naming the file
                bad.append(f"{self.files[i]}: cannot read image ({type(e).__name__}: {e})")
        x = torch.from_numpy(np.stack(ims)) if ims else torch.zeros((0, 0, 0, 0), dtype=torch.uint8)
        return x, np.asarray(keep, np.int64), bad


class _Keys:
    """The DataLoader's sampler: the batches of the current pass, set by `Reader.__call__` (persistent workers
    outlive one pass; the order always comes from the main process)."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _identity(b):
    return b


def _mp_context():
    """fork on Linux, also after TensorFlow/onnxruntime started their threads in this process (the verify stage):
    the workers only run PIL, numpy and torch's tensor sharing, and never touch a lock those threads hold. Measured
    (2 cores, 1,024 JPEGs at 64 px, TF 2.x loaded and run first): fork 0.11-0.17 s to the first batch, 0.27-0.55 s a
    pass; forkserver 0.10-0.14 s / 0.34-0.36 s -- but forkserver (and spawn) re-import the caller's __main__ in every
    worker, which crashes a user's unguarded `es.build(...)` script. Elsewhere (macOS): the platform's default."""
    import multiprocessing as mp

    return mp.get_context("fork") if sys.platform.startswith("linux") else None


class Reader:
    """Batches of an ImageSet's uint8 images in the order asked for: `for x in read(batches)` gives a uint8 NHWC
    tensor per batch (with `collect_bad`: `(x, keep)`, keep = the positions in the batch of the images x holds).

    Folder images are decoded by `images.workers` DataLoader worker processes, one batch per task, results in
    the order of the batches: what comes out does not depend on the worker count. Arrays are sliced in this
    process (as fast as it gets). An unreadable image raises one EdgeSparseError naming the file; with
    `collect_bad` it is left out of its batch and its "path: why" added to `self.bad`. `pin_memory` (CUDA) pins
    the batches so the copy to the device can be non-blocking. Workers start on the first pass, and for a pass of
    fewer than `_MIN_FOR_WORKERS` images not at all unless `persistent` (a training's reader: one start serves
    every epoch). Use as a context manager, or `close()` (workers end there).
    """

    def __init__(self, images: ImageSet, *, pin_memory: bool = False, collect_bad: bool = False,
                 persistent: bool = False):
        self.images, self.pin_memory, self.collect_bad, self.persistent = images, pin_memory, collect_bad, persistent
        self.bad: list[str] = []
        w = images.workers
        self.workers = 0 if images.x is not None else (default_workers() if w is None else int(w))
        self._loader = self._keys = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        it = getattr(self._loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()
        self._loader = None

    def _batches(self, batches: Iterable[np.ndarray]):
        s = self.images
        if s.x is not None:
            import torch

            for idx in batches:
                yield torch.from_numpy(s.x[np.asarray(idx, np.int64)]), None, []
            return
        batches = [np.asarray(idx, np.int64) for idx in batches]
        if self.workers == 0 or (not self.persistent and sum(map(len, batches)) < _MIN_FOR_WORKERS):
            ds = _FolderBatches(s.files, s.size)  # (a few images: not worth starting processes for)
            for idx in batches:
                yield ds[idx]
            return
        if self._loader is None:
            from torch.utils.data import DataLoader

            self._keys = _Keys()
            self._loader = DataLoader(_FolderBatches(s.files, s.size), batch_size=None, sampler=self._keys,
                                      num_workers=self.workers, collate_fn=_identity, pin_memory=self.pin_memory,
                                      persistent_workers=True, multiprocessing_context=_mp_context(), prefetch_factor=4)
        self._keys.batches = batches
        yield from self._loader

    def __call__(self, batches: Iterable[np.ndarray]) -> Iterator:
        for x, keep, bad in self._batches(batches):
            if bad:
                if not self.collect_bad:
                    raise EdgeSparseError(f"{bad[0]}; {BAD_IMAGE_HINT}")
                self.bad.extend(bad)
            if self.collect_bad:
                yield x, keep
            else:
                yield x


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


def _drop_unreadable(s: ImageSet) -> tuple[ImageSet, list[str]]:
    """`s` without the images that do not decode (each decoded once, by the workers), and their "path: why"."""
    ok = np.zeros(len(s), bool)
    with Reader(s, collect_bad=True) as read:
        chunks = np.array_split(np.arange(len(s)), max(1, -(-len(s) // _SMALL_READ)))
        for idx, (_, keep) in zip(chunks, read(chunks)):
            ok[idx[keep]] = True
        bad = read.bad
    return s.subset(np.flatnonzero(ok)), bad


def load_folder(data_dir: Path, size: int, *, workers: Optional[int] = None, skip_bad_images: bool = False):
    d = Path(data_dir)
    files, y, classes = _scan_folder(d / "train")
    train = ImageSet(None, y, files, size, workers)
    test = None
    for name in ("test", "val"):
        if (d / name).is_dir():
            f, yy, _ = _scan_folder(d / name, classes)
            test = ImageSet(None, yy, f, size, workers)
            break
    skipped = []
    if skip_bad_images:
        train, bad = _drop_unreadable(train)
        skipped += bad
        if test is not None:
            test, bad = _drop_unreadable(test)
            skipped += bad
        if not len(train):
            raise EdgeSparseError(f"image folder {d / 'train'}: no image is readable ({skipped[0]})")
    return train, test, classes, skipped


# --------------------------------------------------------------------------- decode once

DECODED_FORMAT = 1  # bump when load_image's output for the same file changes


def _decoded_path(s: ImageSet, cache_dir: Path) -> Path:
    h = hashlib.sha256(f"edge_sparse.decoded/{DECODED_FORMAT}\0{s.size}\0".encode())
    for f in s.files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return cache_dir / f"{h.hexdigest()[:24]}-{len(s)}x{s.size}.u8"


def _decode_to(s: ImageSet, path: Path) -> np.ndarray:
    from edge_sparse import _io

    shape = (len(s), s.size, s.size, 3)
    if not (path.is_file() and path.stat().st_size == int(np.prod(shape))):
        with _io.atomic_path(path) as tmp:
            mm = np.memmap(tmp, np.uint8, "w+", shape=shape)
            chunks = np.array_split(np.arange(len(s)), max(1, -(-len(s) // 256)))
            with Reader(s) as read:
                for idx, xb in zip(chunks, read(chunks)):
                    mm[idx[0] : idx[-1] + 1] = xb.numpy()
            mm.flush()
            del mm
    return np.memmap(path, np.uint8, "r", shape=shape)


def decode_once(splits: Splits, cache_dir: str | Path) -> Splits:
    """Folder datasets: each split's images decoded once (by the workers) into a uint8 memmap under `cache_dir`,
    keyed by the files (path, size, mtime) and the image size, then read as arrays: no epoch, evaluation or later
    build decodes a JPEG again. The pixels are load_image's own, so every result is the same as decoding each time.
    Other datasets come back as they are."""
    if splits.train.x is not None:
        return splits
    d = Path(cache_dir)
    sets = {}
    for name in ("train", "val", "test"):
        s = getattr(splits, name)
        sets[name] = ImageSet(_decode_to(s, _decoded_path(s, d)), s.y)
    import dataclasses

    return dataclasses.replace(splits, **sets)


def decode_once_if_room(splits: Splits, cache_dir: str | Path, max_share: float = 0.5) -> tuple[Splits, str]:
    """`decode_once` when the decoded pixels take at most `max_share` of the free disk under `cache_dir` (else the
    splits as they are: decoded at every read); and a line saying which."""
    import shutil

    n = len(splits.train) + len(splits.val) + len(splits.test)
    need = n * splits.train.size ** 2 * 3
    d = Path(cache_dir)
    probe = next((p for p in (d, *d.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if need > max_share * free:
        return splits, (f"images decoded at every read: decoding them once would take {need / 2**30:.1f} GiB, more "
                        f"than half the {free / 2**30:.1f} GiB free under {d}")
    return decode_once(splits, d), f"{n:,} images decoded once into {d} ({need / 2**20:,.0f} MiB of uint8 pixels)"


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
    workers: Optional[int] = None,
    skip_bad_images: bool = False,
) -> Splits:
    """Load a dataset and split it deterministically by seed.

    `limit_train` / `limit_eval` take class-balanced slices (QUICK builds, tests). Folder datasets: `workers`
    processes decode the images (None: `default_workers()`, 0: this process; results never depend on it); an
    unreadable image fails the first read of it, naming the file, unless `skip_bad_images`: then every image is
    decoded once here, the unreadable ones are left out before the splits are drawn and listed in `Splits.skipped`.
    """
    if workers is not None and workers < 0:
        raise EdgeSparseError(f"--workers must be >= 0 (0: decode in the main process), got {workers}")
    if name not in DATASETS:
        raise EdgeSparseError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if name != "fashion-mnist" and not data_dir:
        raise EdgeSparseError(f"dataset {name!r} needs --data-dir (DATA_DIR=) pointing at the user's copy")
    if data_dir and not Path(data_dir).is_dir():
        raise EdgeSparseError(f"data directory {data_dir} does not exist")
    skipped = []
    if name == "fashion-mnist":
        train, test, classes = load_fashion_mnist(Path(data_dir) if data_dir else None)
    elif name == "cifar10":
        train, test, classes = load_cifar10(Path(data_dir))
    elif name == "cifar100":
        train, test, classes = load_cifar100(Path(data_dir))
    else:
        train, test, classes, skipped = load_folder(Path(data_dir), image_size, workers=workers,
                                                    skip_bad_images=skip_bad_images)

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
    return Splits(name, tuple(classes), train, val, test, mean, std, tuple(skipped))


def _channel_stats(s: ImageSet, rng: np.random.Generator, n: int = 2000, chunk: int = 250):
    """Per-channel mean and std of n random train images, read in chunks (folder images: by the workers, in
    parallel) and merged exactly (Chan et al.'s pairwise update): memory is a chunk's, not n images' in float64
    (2,000 at 224 px would be 2.4 GB)."""
    idx = np.sort(rng.choice(len(s), size=min(n, len(s)), replace=False))
    count, mean, m2 = 0, 0.0, 0.0
    with Reader(s) as read:
        for xb in read(np.array_split(idx, max(1, -(-len(idx) // chunk)))):
            x = xb.numpy().reshape(-1, xb.shape[-1]).astype(np.float64) / 255.0
            k, mk = len(x), x.mean(axis=0)
            m2k = ((x - mk) ** 2).sum(axis=0)
            d = mk - mean
            mean = mean + d * k / (count + k)
            m2 = m2 + m2k + d * d * count * k / (count + k)
            count += k
    std = np.sqrt(m2 / count) + 1e-6
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def to_tensor(x_uint8, mean: Sequence[float], std: Sequence[float]):
    """uint8 NHWC (numpy array, or torch tensor on any device) -> normalised float32 NCHW torch tensor there."""
    import torch

    x = x_uint8 if isinstance(x_uint8, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x_uint8))
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def normalize_np(x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float], layout: str = "NHWC") -> np.ndarray:
    """uint8 NHWC -> normalised float32, NHWC or NCHW (for the exporters and runtimes)."""
    x = x_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
