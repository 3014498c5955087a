"""The Python entry points for your own model: `es.build` (the whole pipeline) and `es.export`.

    import edge_sparse as es
    res = es.build(model, target="rpi4", dataset="folder", data_dir="~/data", weights="trained.safetensors")
    res.bundle, res.sparsity, res.accuracy["tflite_int8"], res.latency["predicted_p90"]
    art = es.export(pruned_model, torch.zeros(1, 3, 96, 96), calib=images_uint8_nhwc, out="out/")

`model` is an `nn.Module` (or a factory reference `path/net.py:make_model`); it is rebuilt from a deep
copy wherever a stage needs it, so the caller's module is never modified.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from edge_sparse.errors import EdgeSparseError


@dataclass
class BuildResult:
    bundle: Path  # dist/<target>/
    sparsity: float
    params: int
    macs: int
    accuracy: dict  # metadata.json "accuracy" (eval slice, and "test": the whole test split with intervals)
    latency: dict  # metadata.json "latency_ms" (predicted p90/p50, budget, source, provenance)
    metadata: dict

    def __str__(self) -> str:
        return (f"{self.bundle}: sparsity {self.sparsity:.2f}, {self.macs / 1e6:.2f} M MACs, int8 top-1 "
                f"{self.accuracy['tflite_int8']:.2f}%, predicted p90 {self.latency['predicted_p90']:.4f} ms "
                f"({self.latency['source']}) vs budget {self.latency['budget']:.4g} ms")


def build(model: Union[torch.nn.Module, str] = "resnet8", target: str = "rpi4", *, dataset: str = "fashion-mnist",
          data_dir: Optional[str] = None, weights: Optional[str] = None, no_train: bool = False, quick: bool = False,
          out_dir: str | Path = "dist", cache_dir: str | Path = "build/cache", **config) -> BuildResult:
    """Train (or start from `weights`), search, prune, fine-tune, export, verify and bundle `model` for `target`."""
    import json

    from edge_sparse import usermodel
    from edge_sparse.config import BuildConfig
    from edge_sparse.pipeline import run

    ref = usermodel.register(model) if isinstance(model, torch.nn.Module) else str(model)
    if no_train and not weights:
        raise EdgeSparseError("no_train=True needs weights=...: there is nothing trained to prune")
    base = BuildConfig.quick() if quick else BuildConfig()
    if no_train:  # weights not trained for sparsity: rank channels by their effect on the loss unless told otherwise
        config.setdefault("criterion", "taylor")
    if weights and "train" not in config:
        config["train"] = base.train.replace(epochs=1)
    cfg = dataclasses.replace(base, model=ref, dataset=dataset, data_dir=data_dir, weights=weights, no_train=no_train,
                              **config)
    b = run(target, cfg, out_dir=out_dir, cache_dir=cache_dir)
    path = Path(b.results["bundle"]["path"])
    meta = json.loads((path / "metadata.json").read_text())
    return BuildResult(path, meta["sparsity"], meta["model"]["params"], meta["model"]["macs"], meta["accuracy"],
                       meta["latency_ms"], meta)


def export(model: torch.nn.Module, example_input: torch.Tensor, *, calib: np.ndarray, out: str | Path,
           mean=(0.0,), std=(1.0,), eval_images: Optional[np.ndarray] = None, eval_labels: Optional[np.ndarray] = None) -> dict:
    """int8 `.tflite` + int8 QDQ `.onnx` (and fp32 ONNX) of a model you pruned yourself, with parity numbers.

    `calib`: uint8 NHWC images (0..255) as the model's preprocessing expects them raw; normalised with
    `mean`/`std` (per channel, on x/255). Parity is measured on `eval_images` (default: the calibration
    images) against the torch fp32 model: top-1 agreement and max |logit difference| per artifact.
    """
    from edge_sparse import verify
    from edge_sparse.data import normalize_np
    from edge_sparse.export import lint, onnx as eonnx, tflite as etflite
    from edge_sparse.pruning import profile
    from edge_sparse.train import predict
    from edge_sparse.data import ImageSet

    calib = np.asarray(calib)
    shape = tuple(example_input.shape[1:])
    if calib.dtype != np.uint8 or calib.ndim != 4 or calib.shape[1:] != (shape[1], shape[2], shape[0]):
        raise EdgeSparseError(f"calib must be uint8 NHWC images of shape (N, {shape[1]}, {shape[2]}, {shape[0]}), "
                              f"got {calib.dtype} {calib.shape}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    eonnx.export_fp32(model, shape, out / "model_fp32.onnx")
    eonnx.quantize_int8(out / "model_fp32.onnx", normalize_np(calib, mean, std, "NCHW"), out / "model.onnx")
    notes = etflite.export(out / "model_fp32.onnx", normalize_np(calib, mean, std, "NHWC"), out / "model_fp32.tflite",
                           out / "model.tflite")
    lint_report = lint.check(out / "model.tflite", profile(model, example_input), int8=True)
    x = calib if eval_images is None else np.asarray(eval_images)
    y = np.zeros(len(x), np.int64) if eval_labels is None else np.asarray(eval_labels)
    ref = predict(model, ImageSet(x, y), mean, std)
    arts = {"model.onnx": ("int8", out / "model.onnx"), "model.tflite": ("int8", out / "model.tflite"),
            "model_fp32.tflite": ("float", out / "model_fp32.tflite")}
    par = verify.check_all(arts, ref, x, y if eval_labels is not None else ref.argmax(1), mean, std, enforce=False)
    return {"tflite": out / "model.tflite", "onnx": out / "model.onnx", "onnx_fp32": out / "model_fp32.onnx",
            "parity": par, "lint": lint_report.to_dict(), "notes": notes}
