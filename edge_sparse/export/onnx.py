"""ONNX export: fp32 from torch, then static int8 QDQ with onnxruntime.quantization.

In:  a shrunk torch model in eval mode, its input shape, normalised calibration images (NCHW float32).
Out: `model_fp32.onnx` (BatchNorm folded into Conv, GlobalAveragePool, checked by onnx.checker) and
     `model.onnx` (QDQ, per-channel int8 weights, int8 activations calibrated by MinMax).
Run: `edge-sparse export --model-dir runs/x/finetuned --out dist/host`

Exporter choice: the legacy TorchScript exporter (`dynamo=False`). It honours the opset we ask
for (17, which onnx2tf and onnxruntime.quantization both handle), folds BatchNorm into Conv in eval
mode and emits AdaptiveAvgPool2d(1) as GlobalAveragePool; the dynamo exporter stays at opset 18
whatever is asked. It is deprecated upstream, so a test pins the exported graph's shape (no
BatchNormalization, one GlobalAveragePool, no Transpose) and will fail loudly if that changes.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_fp32(model: torch.nn.Module, input_shape: Sequence[int], path: Path) -> dict:
    """Export `model` for a batch of 1 image of `input_shape` (C, H, W); return the op histogram."""
    import onnx

    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, torch.zeros(1, *input_shape), buf, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            )
        except Exception as e:
            raise EdgeSparseError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    mp = onnx.load_from_string(buf.getvalue())
    mp = _drop_identities(mp)
    try:
        onnx.checker.check_model(mp, full_check=True)
    except onnx.checker.ValidationError as e:
        raise EdgeSparseError(f"exported ONNX fails onnx.checker: {str(e).splitlines()[0]}") from None
    _io.write_bytes(path, mp.SerializeToString())
    return dict(Counter(n.op_type for n in mp.graph.node))


def _drop_identities(mp):
    """Remove Identity nodes (empty residual shortcuts) by rewiring their consumers."""
    g = mp.graph
    outputs = {o.name for o in g.output}
    rename = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    def resolve(name):
        while name in rename:
            name = rename[name]
        return name
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    del g.node[:]
    g.node.extend(keep)
    return mp


def load_checked(path: Path):
    """Load an ONNX file, or say clearly why it cannot be used."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgeSparseError(f"{p}: no such ONNX file")
    try:
        mp = onnx.load(str(p))
        onnx.checker.check_model(mp)
    except Exception as e:
        raise EdgeSparseError(f"{p}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'truncated or corrupt'})") from None
    return mp


def check_calibration(calib: np.ndarray, input_shape: Sequence[int], where: str = "calibration set") -> None:
    """Calibration images must be float32 NCHW of the model's input shape, at least one of them."""
    if not isinstance(calib, np.ndarray) or calib.size == 0 or len(calib) == 0:
        raise EdgeSparseError(f"{where} is empty; int8 calibration needs images (calib_data/ holds >= 500)")
    if calib.dtype != np.float32:
        raise EdgeSparseError(f"{where} has dtype {calib.dtype}; expected normalised float32 images")
    if tuple(calib.shape[1:]) != tuple(input_shape):
        raise EdgeSparseError(f"{where} images have shape {tuple(calib.shape[1:])}; the model expects {tuple(input_shape)} (C, H, W)")


def quantize_int8(fp32_path: Path, calib_nchw: np.ndarray, path: Path) -> dict:
    """Static QDQ int8 quantization (per-channel weights) calibrated on `calib_nchw`; return op histogram."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    mp = load_checked(fp32_path)
    shape = [d.dim_value for d in mp.graph.input[0].type.tensor_type.shape.dim][1:]
    check_calibration(calib_nchw, shape)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib_nchw[i : i + 1] for i in range(len(calib_nchw)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns via the root logger
    with _io.atomic_path(path) as tmp:
        tmp.unlink()
        try:
            quantize_static(
                str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as e:
            raise EdgeSparseError(f"onnxruntime int8 quantization of {fp32_path} failed: {type(e).__name__}: {e}") from None
        q = onnx.load(str(tmp))
    return dict(Counter(n.op_type for n in q.graph.node))
