"""Numeric parity of every artifact against the torch fp32 model, as numbers (never a bool).

In:  torch fp32 logits on the held-out images, the artifacts (ONNX fp32/int8, TFLite fp32/int8).
Out: per artifact: top-1 accuracy, top-1 agreement with torch fp32, max |logits - torch logits|
     (int8 outputs dequantised with the scale/zero-point read from the model), and the gate verdict.
Run: part of `make build`; `edge-sparse verify --bundle dist/host` re-checks a bundle.

Gates: float artifacts >= 99.9 % agreement; int8 artifacts >= 99 % agreement and <= 1.0 pt accuracy
loss against torch fp32. A build fails below them and says by how much.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_sparse.data import normalize_np
from edge_sparse.errors import EdgeSparseError, GateError

FLOAT_MIN_AGREEMENT = 99.9
INT8_MIN_AGREEMENT = 99.0
INT8_MAX_ACC_LOSS = 1.0


@dataclass(frozen=True)
class Parity:
    artifact: str  # file name
    kind: str  # "float" | "int8"
    accuracy: float  # top-1, percent, on the held-out images
    agreement: float  # top-1 agreement with torch fp32, percent
    max_abs_diff: float  # max |logits - torch fp32 logits| (dequantised for int8)
    accuracy_loss: float  # torch fp32 accuracy - this accuracy, points
    n: int  # images compared

    def failures(self) -> list[str]:
        out = []
        need = FLOAT_MIN_AGREEMENT if self.kind == "float" else INT8_MIN_AGREEMENT
        if self.agreement < need:
            out.append(f"{self.artifact}: top-1 agreement {self.agreement:.2f}% < {need}% (short by {need - self.agreement:.2f} pt)")
        if self.kind == "int8" and self.accuracy_loss > INT8_MAX_ACC_LOSS:
            out.append(f"{self.artifact}: accuracy loss {self.accuracy_loss:.2f} pt > {INT8_MAX_ACC_LOSS} pt "
                       f"(over by {self.accuracy_loss - INT8_MAX_ACC_LOSS:.2f} pt)")
        return out


def tflite_interpreter(path: Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    from edge_sparse.harness.bench import check_tflite_bounds

    try:
        problem = check_tflite_bounds(Path(path).read_bytes())
    except OSError as e:
        raise EdgeSparseError(f"{path}: cannot read ({e.strerror})") from None
    if problem:
        raise EdgeSparseError(f"{path}: not a loadable .tflite ({problem})")
    try:
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgeSparseError(f"{path}: not a loadable .tflite ({str(e).splitlines()[0]})") from None
    return it


def run_tflite(path: Path, x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float], threads: int = 1) -> np.ndarray:
    """Float (dequantised) logits of a .tflite on raw uint8 NHWC images, one image per invoke."""
    it = tflite_interpreter(path, threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = normalize_np(x_uint8, mean, std, layout="NHWC")
    if tuple(inp["shape"][1:]) != x.shape[1:]:
        raise EdgeSparseError(f"{path}: input shape {tuple(inp['shape'])} does not fit images {x.shape[1:]} (NHWC)")
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    res = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / in_scale) + in_zp, info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            y = (y.astype(np.float32) - out_zp) * out_scale
        res.append(y.astype(np.float32))
    return np.stack(res)


def run_onnx(path: Path, x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float], threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgeSparseError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    name = sess.get_inputs()[0].name
    x = normalize_np(x_uint8, mean, std, layout="NCHW")
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float32)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = correct / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(100 * max(0.0, c - h), 3), round(100 * min(1.0, c + h), 3))


def top1(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 accuracy (percent) with its 95 % interval and the count it rests on."""
    k = int((logits.argmax(1) == labels).sum())
    return {"acc": round(100 * k / len(labels), 3), "ci95": list(wilson(k, len(labels))), "n": int(len(labels))}


def paired_diff(a_logits: np.ndarray, b_logits: np.ndarray, labels: np.ndarray, z: float = 1.96) -> dict:
    """a - b top-1 (points) on the same images, with a 95 % interval from the paired per-image differences."""
    d = (a_logits.argmax(1) == labels).astype(np.float64) - (b_logits.argmax(1) == labels).astype(np.float64)
    m, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return {"diff_pt": round(100 * m, 3), "ci95_pt": [round(100 * (m - z * se), 3), round(100 * (m + z * se), 3)],
            "n": int(len(d))}


def parity(artifact: str, kind: str, logits: np.ndarray, ref_logits: np.ndarray, labels: np.ndarray) -> Parity:
    acc = float((logits.argmax(1) == labels).mean() * 100)
    ref_acc = float((ref_logits.argmax(1) == labels).mean() * 100)
    agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean() * 100)
    return Parity(artifact, kind, round(acc, 3), round(agree, 3), float(np.abs(logits - ref_logits).max()),
                  round(ref_acc - acc, 3), int(len(labels)))


def check_all(artifacts: dict[str, tuple[str, Path]], ref_logits: np.ndarray, x_uint8: np.ndarray, labels: np.ndarray,
              mean, std, *, enforce: bool = True) -> dict[str, dict]:
    """Run every artifact ({name: (kind, path)}) on the images; raise GateError listing every failure."""
    results, fails = {}, []
    for name, (kind, path) in artifacts.items():
        runner = run_tflite if str(path).endswith(".tflite") else run_onnx
        p = parity(name, kind, runner(path, x_uint8, mean, std), ref_logits, labels)
        results[name] = asdict(p)
        fails += p.failures()
    if fails and enforce:
        raise GateError("parity gate failed: " + "; ".join(fails))
    return results


def layer_errors(fp32_onnx: Path, int8_onnx: Path, calib_nchw: np.ndarray, top: int = 10) -> list[dict]:
    """Per-layer int8 error: relative L2 error and cosine similarity of every Conv/Gemm/Add output,
    fp32 graph vs int8 QDQ graph (its DequantizeLinear view of the same tensor), on calibration images.
    Sorted worst first. (onnx2tf closed this request, #258; the QDQ ONNX makes it tractable.)
    """
    import onnx
    import onnxruntime as ort

    def expose(path: Path, names: list[str]) -> tuple[bytes, list[str]]:
        mp = onnx.load(str(path))
        have = {o for n in mp.graph.node for o in n.output}
        keep = [n for n in names if n in have]
        existing = {o.name for o in mp.graph.output}
        for n in keep:
            if n not in existing:
                mp.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
        return mp.SerializeToString(), keep

    fp = onnx.load(str(fp32_onnx))
    tensors = [(n.output[0], n.op_type, n.name) for n in fp.graph.node if n.op_type in ("Conv", "Gemm", "Add")]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fp_bytes, fp_names = expose(fp32_onnx, [t for t, _, _ in tensors])
    q_candidates = []
    for t, _, _ in tensors:
        q_candidates += [f"{t}_DequantizeLinear_Output", t]
    q_bytes, q_names = expose(int8_onnx, q_candidates)
    s_fp = ort.InferenceSession(fp_bytes, so, providers=["CPUExecutionProvider"])
    s_q = ort.InferenceSession(q_bytes, so, providers=["CPUExecutionProvider"])
    in_fp, in_q = s_fp.get_inputs()[0].name, s_q.get_inputs()[0].name
    out_fp = [o.name for o in s_fp.get_outputs()]
    out_q = [o.name for o in s_q.get_outputs()]
    acc: dict[str, list] = {}
    for i in range(len(calib_nchw)):
        a = dict(zip(out_fp, s_fp.run(None, {in_fp: calib_nchw[i : i + 1]})))
        q = dict(zip(out_q, s_q.run(None, {in_q: calib_nchw[i : i + 1]})))
        for t, op, node in tensors:
            qt = q.get(f"{t}_DequantizeLinear_Output", q.get(t))
            if t not in a or qt is None:
                continue
            ref, got = a[t].ravel().astype(np.float64), qt.ravel().astype(np.float64)
            acc.setdefault(t, [node or t, op, 0.0, 0.0, 0.0, 0])
            acc[t][2] += float(((ref - got) ** 2).sum())
            acc[t][3] += float((ref ** 2).sum())
            acc[t][4] += float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-12))
            acc[t][5] += 1
    rows = [{"tensor": t, "node": v[0], "op": v[1], "rel_l2_error": float(np.sqrt(v[2] / max(v[3], 1e-12))),
             "cosine": v[4] / max(1, v[5])} for t, v in acc.items()]
    return sorted(rows, key=lambda r: -r["rel_l2_error"])[:top]
