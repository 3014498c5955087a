"""Calibration data for int8: the committed `calib_data/` slice, its MANIFEST, and its checks.

In:  a dataset's train split (never val or test).
Out: `calib_data/<dataset>.npz` (x: uint8 NHWC, y: labels), class-balanced, and
     `calib_data/MANIFEST.json` (sha256, count, shape, dtype, class counts, the command that made it).
Run: `edge-sparse calib --dataset fashion-mnist --count 520` (the default slice is committed).

Both exporters (onnxruntime.quantization and the TFLite converter) take their calibration images
from here, normalised with the dataset's mean/std: the same images, the same preprocessing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from edge_sparse import _io
from edge_sparse.data import Splits, _stratified_pick, sha256_array
from edge_sparse.errors import EdgeSparseError

MIN_CALIB = 100


def calib_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "calib_data"
    return here if here.is_dir() else Path.cwd() / "calib_data"


def make(splits: Splits, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced slice of the *train* split."""
    if count < 1:
        raise EdgeSparseError(f"calibration count must be >= 1, got {count}")
    idx = _stratified_pick(splits.train.y, min(count, len(splits.train)), np.random.default_rng(seed + 7))
    return splits.train.images(idx), splits.train.y[idx]


def drop_held_out(x: np.ndarray, splits: Splits) -> np.ndarray:
    """`x` without the images that also appear (byte for byte) in the validation or test split."""
    import hashlib

    from edge_sparse.data import Reader

    held = set()
    for split in (splits.val, splits.test):  # streamed in batches (folder images decoded by the workers)
        with Reader(split) as read:
            for xb in read(np.array_split(np.arange(len(split)), max(1, -(-len(split) // 256)))):
                held.update(hashlib.sha256(im.tobytes()).digest() for im in xb.numpy())
    keep = np.array([hashlib.sha256(im.tobytes()).digest() not in held for im in x], dtype=bool)
    return x[keep]


def write(directory: Path, dataset: str, x: np.ndarray, y: np.ndarray, command: str) -> dict:
    directory = Path(directory)
    with _io.atomic_path(directory / f"{dataset}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x=x, y=y)
    manifest_path = directory / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    entry = {
        "file": f"{dataset}.npz", "split": "train", "sha256_x": sha256_array(x), "count": int(len(x)),
        "shape": list(x.shape[1:]), "dtype": str(x.dtype),
        "class_counts": {str(int(c)): int(n) for c, n in zip(*np.unique(y, return_counts=True))},
        "command": command,
    }
    manifest[dataset] = entry
    _io.write_json(manifest_path, manifest)
    return entry


def load(dataset: str, *, hwc: tuple[int, int, int], num_classes: int, directory: Optional[Path] = None,
         min_count: int = MIN_CALIB) -> Optional[np.ndarray]:
    """The committed slice for `dataset`, validated; None when there is none for this dataset."""
    d = Path(directory) if directory else calib_dir()
    f = d / f"{dataset}.npz"
    if not f.is_file():
        return None
    try:
        manifest = json.loads((d / "MANIFEST.json").read_text())[dataset]
    except (OSError, ValueError, KeyError):
        raise EdgeSparseError(f"{f}: no entry for {dataset!r} in {d / 'MANIFEST.json'}; re-run `edge-sparse calib --dataset {dataset}`") from None
    try:
        with np.load(f) as z:
            x, y = z["x"], z["y"]
    except Exception as e:
        raise EdgeSparseError(f"{f}: unreadable calibration file ({e})") from None
    where = f"calibration set {f}"
    if x.dtype != np.uint8:
        raise EdgeSparseError(f"{where}: dtype {x.dtype}, expected uint8 raw pixels")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(hwc):
        raise EdgeSparseError(f"{where}: images of shape {tuple(x.shape[1:])}, the model takes {tuple(hwc)} (H, W, C)")
    if len(x) < min_count:
        raise EdgeSparseError(f"{where}: {len(x)} images, at least {min_count} are needed")
    if len(x) != manifest.get("count") or sha256_array(x) != manifest.get("sha256_x"):
        raise EdgeSparseError(f"{where}: contents do not match MANIFEST.json (count or sha256); re-run `edge-sparse calib`")
    missing = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise EdgeSparseError(f"{where}: classes {missing[:10]} have no calibration image; every class needs some")
    return x
