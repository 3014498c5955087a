"""TFLite export: ONNX fp32 -> (onnx2tf) NHWC SavedModel -> fp32 and full-integer int8 .tflite.

In:  `model_fp32.onnx`, normalised calibration images (NHWC float32).
Out: `model_fp32.tflite` and `model.tflite` (int8 weights and activations, int8 input and output,
     quantised with a representative dataset drawn from calib_data/).
Run: `edge-sparse export --model-dir runs/x/finetuned --out dist/host`

Offline by construction: onnx2tf downloads `calibration_image_sample_data_20x128x128x3_float32.npy`
into its working directory for any 3-channel 4-D input, even in float mode. We run it in a
temporary working directory where a file of that name, built from *our* calibration images, is
already in place, so nothing is fetched.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _onnx2tf_sample(calib_nhwc: np.ndarray) -> np.ndarray:
    """20 x 128 x 128 x 3 float32 from our calibration images (nearest resize, grey -> 3 channels)."""
    x = calib_nhwc[:20]
    if len(x) < 20:
        x = np.concatenate([x] * (20 // max(1, len(x)) + 1))[:20]
    h, w = x.shape[1:3]
    rows = (np.arange(128) * h // 128)
    cols = (np.arange(128) * w // 128)
    x = x[:, rows][:, :, cols]
    c = x.shape[-1]
    x = np.concatenate([x] * 3, axis=-1)[..., :3] if c < 3 else x[..., :3]
    return np.ascontiguousarray(x, dtype=np.float32)


@contextlib.contextmanager
def _quiet():
    """onnx2tf and the TF converter print pages; keep them for the error message only."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def onnx_to_saved_model(onnx_path: Path, calib_nhwc: np.ndarray, workdir: Path) -> Path:
    """Run onnx2tf in `workdir` (pre-seeded with its sample file) and return the SavedModel path."""
    import onnx2tf

    workdir = Path(workdir).resolve()
    onnx_path = Path(onnx_path).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / ONNX2TF_SAMPLE, _onnx2tf_sample(calib_nhwc))
    out = workdir / "saved_model"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with _quiet() as log:
            try:
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path), output_folder_path=str(out),
                    non_verbose=True, verbosity="error", output_signaturedefs=True,
                    copy_onnx_input_output_names_to_tflite=True,
                )
            except SystemExit as e:  # onnx2tf exits on unsupported ops
                raise EdgeSparseError(f"onnx2tf could not convert {onnx_path} (exit {e.code}): {log.getvalue()[-400:]}") from None
            except Exception as e:
                raise EdgeSparseError(f"onnx2tf could not convert {onnx_path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        os.chdir(cwd)
    if not (out / "saved_model.pb").is_file():
        raise EdgeSparseError(f"onnx2tf produced no SavedModel for {onnx_path}")
    return out


def convert(saved_model: Path, path: Path, calib_nhwc: np.ndarray | None) -> None:
    """SavedModel -> .tflite: fp32 when `calib_nhwc` is None, else full-integer int8 with int8 I/O."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calib_nhwc is not None:
        if len(calib_nhwc) == 0:
            raise EdgeSparseError("calibration set is empty; int8 TFLite needs a representative dataset")

        def representative():
            for i in range(len(calib_nhwc)):
                yield [calib_nhwc[i : i + 1].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with _quiet():
        try:
            data = conv.convert()
        except Exception as e:
            raise EdgeSparseError(f"TFLite conversion of {saved_model} failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    _io.write_bytes(path, data)


def export(onnx_fp32: Path, calib_nhwc: np.ndarray, fp32_out: Path | None, int8_out: Path) -> None:
    """Both .tflite files from one onnx2tf conversion (in a throw-away working directory)."""
    tmp = Path(tempfile.mkdtemp(prefix="edge_sparse_onnx2tf_"))
    try:
        sm = onnx_to_saved_model(onnx_fp32, calib_nhwc, tmp)
        if fp32_out is not None:
            convert(sm, fp32_out, None)
        convert(sm, int8_out, calib_nhwc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
