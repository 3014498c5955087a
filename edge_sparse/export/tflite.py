"""TFLite export: ONNX fp32 -> (onnx2tf) NHWC SavedModel -> fp32 and full-integer int8 .tflite.

In:  `model_fp32.onnx`, normalised calibration images (NHWC float32).
Out: `model_fp32.tflite` and `model.tflite` (int8 weights and activations, int8 input and output,
     quantised with a representative dataset drawn from calib_data/; then every conv's and fully-connected
     layer's int32 bias corrected, layer by layer, on the same images: `correct_biases`).
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
from typing import Optional

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
    return _onnx_to_saved_model(onnx_path, calib_nhwc, workdir)[0]


def _onnx_to_saved_model(onnx_path: Path, calib_nhwc: np.ndarray, workdir: Path,
                         onnx2tf_saves: bool = False) -> tuple[Path, list[str]]:
    """`onnx_to_saved_model`, and one line per kind of graph rewrite made on the way (`rewrite.for_onnx2tf`).
    `onnx2tf_saves`: the way it was done before (onnx2tf writes the SavedModel, and its fp32 and fp16 .tflite files
    beside it), for benchmarks/convert_speed.py; the same SavedModel graph, 1.5-4x slower there."""
    import onnx
    import onnx2tf
    import tf_keras

    from edge_sparse.export import onnx as eonnx, rewrite

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    src = onnx_path  # named in errors; onnx2tf reads the rewritten graph from a file next to its working files
    mp, notes = rewrite.for_onnx2tf(eonnx.load_checked(src), np.ascontiguousarray(calib_nhwc.transpose(0, 3, 1, 2)))
    onnx_path = workdir / "for_onnx2tf.onnx"
    onnx.save(mp, str(onnx_path))
    np.save(workdir / ONNX2TF_SAMPLE, _onnx2tf_sample(calib_nhwc))
    out = workdir / "saved_model"
    # Keras numbers the layers it builds per process (tf.nn.convolution_9, then _10): from a process's second
    # conversion on, the names changed, and from about its third the converter scheduled independent branches in
    # another order (the same ops and weights). A fresh Keras session each time makes every conversion in a process
    # give the bytes a fresh process gives, whatever a build converted before it (its timed finalists).
    tf_keras.backend.clear_session()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with _quiet() as log:
            try:
                model = onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path), output_folder_path=str(out),
                    non_verbose=True, verbosity="error", output_signaturedefs=True,
                    not_use_onnxsim=True,  # done by `rewrite`
                    disable_model_save=not onnx2tf_saves,  # written below; onnx2tf's own .tflite files are never read
                    copy_onnx_input_output_names_to_tflite=onnx2tf_saves,
                )
                if not onnx2tf_saves:
                    if model is None:
                        raise EdgeSparseError(f"onnx2tf built no model from {src}: {log.getvalue()[-400:]}")
                    _write_saved_model(model, out)
            except SystemExit as e:  # onnx2tf exits on unsupported ops
                raise EdgeSparseError(f"onnx2tf could not convert {src} (exit {e.code}): {log.getvalue()[-400:]}") from None
            except EdgeSparseError:
                raise
            except Exception as e:
                raise EdgeSparseError(f"onnx2tf could not convert {src}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        os.chdir(cwd)
    if not (out / "saved_model.pb").is_file():
        raise EdgeSparseError(f"onnx2tf produced no SavedModel for {src}")
    return out, notes


def _write_saved_model(model, out: Path) -> None:
    """The Keras model onnx2tf built, as the SavedModel its `output_signaturedefs` path writes (one `serving_default`
    endpoint, as onnx2tf 1.29 writes it). onnx2tf's own save then also converts the model to fp32 and fp16
    .tflite files we never read, each through `TFLiteConverter.from_keras_model`, which serializes every layer's
    config (TFOpLambda layers carry their constants): 200 of 254 s of a ResNet-18's export at 96 px, measured."""
    import tensorflow as tf
    import tf_keras

    archive = tf_keras.export.ExportArchive()
    archive.add_endpoint(name="serving_default", fn=lambda *inputs: model(inputs),
                         input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    archive.write_out(str(out))


def convert(saved_model: Path, path: Path, calib_nhwc: np.ndarray | None, correct_bias: bool = True,
            fp32_model: bytes | None = None) -> list[str]:
    """SavedModel -> .tflite: fp32 when `calib_nhwc` is None, else full-integer int8 with int8 I/O (and every
    conv's / FC's bias corrected on the calibration images against `fp32_model`, the fp32 conversion of the same
    SavedModel, made here when not given, unless `correct_bias` is False). Returns what was done, one line each."""
    data = _convert_bytes(saved_model, calib_nhwc)
    notes = []
    if calib_nhwc is not None:
        data, repaired = _check_loads(data, saved_model)
        if repaired:
            print(f"  {repaired}")
            notes.append(repaired)
        if correct_bias:
            data, note = correct_biases(data, fp32_model or _convert_bytes(saved_model, None), calib_nhwc)
            print(f"  {note}")
            notes.append(note)
    _io.write_bytes(path, data)
    return notes


def _check_loads(model: bytes, saved_model: Path) -> tuple[bytes, Optional[str]]:
    """The int8 model must load with the interpreter's default delegate (XNNPACK), as it will on the device. One that
    does not because a layer is dead (`_widen_dead_outputs`) is repaired and checked again: the model, and a note
    naming the layers (None when nothing was changed)."""
    from ai_edge_litert.interpreter import Interpreter

    def loads(m: bytes) -> Optional[str]:
        try:
            Interpreter(model_content=m, num_threads=1).allocate_tensors()
            return None
        except (RuntimeError, ValueError) as e:
            return ' '.join(str(e).split())[:300]

    err = loads(model)
    if err is None:
        return model, None
    fixed, widened = _widen_dead_outputs(model)
    if widened and loads(fixed) is None:
        return fixed, (f"{len(widened)} tensors whose calibrated range is far narrower than their inputs x weights "
                       f"(requantisation scale >= {_MAX_RATIO:g}, which XNNPACK refuses: a dead layer's output) "
                       f"quantised in coarser steps (0 stays exact): "
                       f"{', '.join(widened[:3])}{', ...' if len(widened) > 3 else ''}")
    raise EdgeSparseError(f"the int8 .tflite converted from {saved_model} does not load with XNNPACK "
                          f"({err}); {_odd_scales(model) or 'no tensor has an absurd scale'}")


# XNNPACK's qs8 ops refuse a requantisation scale (input scale [x filter scale] / output scale) of 256 or more
_MAX_RATIO = 256.0
# ops whose int8 output shares its input's scale (TFLite's quantisation spec): moving one moves the others
_SAME_SCALE = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "CONCATENATION", "PAD", "PADV2", "GATHER",
               "TRANSPOSE", "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH"}
_FIXED_OUTPUT = {"LOGISTIC", "TANH", "SOFTMAX"}  # output scale fixed by the op (1/256): never moved


def _graph(model: bytes):
    """An int8 .tflite's object tree for reading and rewriting: (model, its subgraph, each operator's builtin name,
    `scale(tensor index)`: the tensor's quantisation scales as float64, None when it has none)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fu

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    mo = fu.convert_bytearray_to_object(bytearray(model))
    g = mo.subgraphs[0]
    kind = [names.get(max(mo.operatorCodes[op.opcodeIndex].builtinCode,
                          mo.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)) for op in g.operators]

    def scale(i: int) -> Optional[np.ndarray]:
        q = g.tensors[i].quantization if i >= 0 else None
        return None if q is None or q.scale is None or not len(q.scale) else np.asarray(q.scale, np.float64)

    return mo, g, kind, scale


def _widen_dead_outputs(model: bytes) -> tuple[bytes, list[str]]:
    """Give every int8 tensor that XNNPACK refuses for a requantisation scale >= 256 a coarser scale.

    Such a tensor is the output of a layer that is (nearly) constant on the calibration images, a dead layer (all its
    channels clamped to 0 by a ReLU, e.g. an untrained SqueezeNet's classifier conv): its calibrated range is ~0, so
    its scale is tiny, and its input x filter scale over it is thousands. Its values (~0) stay representable on a
    coarser grid (0 is the zero point either way), so its scale is raised until the ratio is 64, with every tensor
    that must share that scale (pools, reshapes, concatenations...), and again downstream where the raise pushes a
    consumer's ratio over; a conv or FC reading a moved tensor gets its int32 bias restated in the new units (its
    real value kept: without that, a dead layer's FC consumer added its bias 100x over). Returns the model and the
    names of the tensors moved (none: the model as it was)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fu

    mo, g, kind, scale = _graph(model)

    def constant(i: int) -> bool:  # weights, biases, shapes, axes: a buffer with data
        data = mo.buffers[g.tensors[i].buffer].data if i >= 0 else None
        return data is not None and len(data) > 0

    root = list(range(len(g.tensors)))  # activation tensors tied to one scale, union-find

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for op, k in zip(g.operators, kind):
        if k in _SAME_SCALE:  # SPLIT's data is its second input (the first is the axis); a concat ties all its inputs
            ins = list(op.inputs) if k == "CONCATENATION" else [op.inputs[1 if k == "SPLIT" else 0]]
            for t in ins + list(op.outputs):
                if t >= 0 and not constant(t) and scale(t) is not None:
                    root[find(t)] = find(op.outputs[0])
    moved: dict[int, float] = {}  # tensor -> its scale before
    for _ in range(len(g.operators)):  # each pass fixes a layer or stops; a chain of dead layers takes one per layer
        changed = False
        for op, k in zip(g.operators, kind):
            out = op.outputs[0]
            so = scale(out)
            if k in _SAME_SCALE or k in _FIXED_OUTPUT or so is None or len(so) != 1:
                continue
            ins = [scale(i) for i in op.inputs]
            if k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL"):
                if len(ins) < 2 or ins[0] is None or ins[1] is None:
                    continue
                need = float(ins[0].max() * ins[1].max())
            else:
                acts = [x for i, x in zip(op.inputs, ins) if x is not None and not constant(i)]
                if not acts:
                    continue
                need = float(max(x.max() for x in acts))
            if need / float(so[0]) < _MAX_RATIO:
                continue
            new = need / 64.0
            c = find(out)
            for t in range(len(g.tensors)):
                st = scale(t)
                if find(t) == c and st is not None and len(st) == 1 and st[0] < new:
                    moved.setdefault(t, float(st[0]))
                    g.tensors[t].quantization.scale = [new]
                    changed = True
        if not changed:
            break
    if not moved:
        return model, []
    # a conv's / FC's int32 bias is stored in units of input scale x filter scale: one whose input moved keeps its
    # real value in the new units (a fresh buffer: the converter may share one bias buffer between layers)
    for op, k in zip(g.operators, kind):
        if k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and op.inputs[0] in moved \
                and len(op.inputs) > 2 and op.inputs[2] >= 0 and constant(op.inputs[2]) \
                and g.tensors[op.inputs[2]].type == schema.TensorType.INT32:
            bias = g.tensors[op.inputs[2]]
            old_b = np.frombuffer(bytes(bytearray(mo.buffers[bias.buffer].data)), np.int32)
            ratio = moved[op.inputs[0]] / float(scale(op.inputs[0])[0])
            new_b = np.clip(np.round(old_b.astype(np.float64) * ratio), -2**31, 2**31 - 1).astype(np.int32)
            buf = type(mo.buffers[bias.buffer])()
            buf.data = np.frombuffer(new_b.tobytes(), np.uint8)
            mo.buffers.append(buf)
            bias.buffer = len(mo.buffers) - 1
            bias.quantization.scale = list(np.asarray(bias.quantization.scale, np.float64) / ratio)
    return bytes(fu.convert_object_to_bytearray(mo)), [g.tensors[t].name.decode() for t in moved]


def _odd_scales(model: bytes) -> str:
    """Name what XNNPACK refuses to prepare: int8 tensors whose scale no real activation has (> 1e6), and convs /
    FCs whose requantisation scale (input scale x filter scale / output scale) is 256 or more, which XNNPACK's
    qs8 operators reject (a layer whose output range is far narrower than its inputs x weights: a dead layer)."""
    _, g, kind, scale = _graph(model)
    bad = [t.name.decode() for i, t in enumerate(g.tensors) if scale(i) is not None and scale(i).max() > 1e6]
    out = [f"tensors with a quantisation scale > 1e6: {bad[:3]}"] if bad else []
    req = []
    for op, k in zip(g.operators, kind):
        if k not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        si, sw, so = scale(op.inputs[0]), scale(op.inputs[1]), scale(op.outputs[0])
        if si is None or sw is None or so is None:
            continue
        r = float(si.max() * sw.max() / so.max())
        if r >= _MAX_RATIO:
            req.append(f"{g.tensors[op.outputs[0]].name.decode()} ({r:.3g})")
    if req:
        out.append(f"layers whose requantisation scale is >= 256, which XNNPACK refuses (an output range far "
                   f"narrower than its inputs x weights: a dead layer?): {', '.join(req[:3])}")
    return "; ".join(out)


def _convert_bytes(saved_model: Path, calib_nhwc: np.ndarray | None) -> bytes:
    """The TFLite converter on `saved_model`: fp32, or full-integer int8 with int8 I/O calibrated on `calib_nhwc`."""
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
            import re

            ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(e))))
            why = (f"TF ops {ops} have no TFLite builtin (full-integer int8 allows builtins only)" if ops
                   else f"{type(e).__name__}: {str(e).splitlines()[0]}")
            raise EdgeSparseError(f"TFLite conversion of {saved_model} failed: {why}") from None
    return data


# tflite BuiltinOperator codes of the ops whose int32 bias `correct_biases` adjusts
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED = 3, 4, 9
# the correction costs an invoke per (layer, image) of the int8 model as far as that layer, through XNNPACK (the fp32
# reference, with the compared tensors as its outputs, runs once per image): a model with many layers is corrected on
# fewer calibration images (at least 64); the default ResNet-8 (10 layers) uses all 512. A 316 M-MAC MobileNetV2 at
# 96 px (26 layers, 315 images): 74 s, where TFLite's builtin kernels took 406 s
_INVOKE_BUDGET = 8192
# the fp32 reference tensors kept in memory for the correction (beyond it, the reference runs again per layer)
_REFERENCE_CACHE_BYTES = 1 << 30
_ACT_NONE = 0  # ActivationFunctionType.NONE
_ACT_RELUS = (1, 2, 3)  # RELU, RELU_N1_TO_1, RELU6: a fused clamp below which the error does not show


class _Runner:
    """A .tflite (bytes) kept for reading its tensors on normalised NHWC float inputs.

    By default with TFLite's builtin kernels and every intermediate tensor kept (the XNNPACK delegate may fuse away
    the tensors read). `output_only`: only the graph's output is read, so the model runs as the shipped one does,
    through XNNPACK (~4.6x the builtin int8 kernels' speed on a 316 M-MAC MobileNetV2 at 96 px: 4.8 vs 22 ms); where
    the delegate cannot take the graph, the builtin kernels run it."""

    def __init__(self, model: bytes, output_only: bool = False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        builtin = dict(experimental_preserve_all_tensors=True,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.xnnpack = False
        if output_only:
            try:
                self.it = Interpreter(model_content=model, num_threads=min(4, len(os.sched_getaffinity(0))))
                self.it.allocate_tensors()
                self.xnnpack = True
            except (RuntimeError, ValueError):  # the delegate refused the graph ("failed to prepare"): builtin kernels
                pass
        if not self.xnnpack:
            self.it = Interpreter(model_content=model, num_threads=1, **builtin)
            self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.det = {d["name"]: d for d in (self.it.get_output_details() if self.xnnpack else self.it.get_tensor_details())}

    def run(self, x1: np.ndarray) -> None:
        if self.inp["dtype"] == np.int8:
            s, z = self.inp["quantization"]
            x1 = np.clip(np.round(x1 / s + z), -128, 127).astype(np.int8)
        self.it.set_tensor(self.inp["index"], x1.astype(self.inp["dtype"]))
        self.it.invoke()

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(values as (positions, channels) float, dequantised if int8; mask of int8 values at -128/127)."""
        d = self.det[name]
        t = self.it.get_tensor(d["index"]).reshape(-1, d["shape"][-1])
        if t.dtype != np.int8:
            return t.astype(np.float32), np.zeros(t.shape, dtype=bool)
        s, z = d["quantization"]
        return (t.astype(np.float32) - z) * s, (t == -128) | (t == 127)


def _mean_shift(q_model: bytes, ref: _Runner, x: np.ndarray, name: str, behind_relu: bool,
                cached: Optional[list] = None, output_only: bool = False) -> np.ndarray:
    """Per channel of tensor `name`: the mean of int8 - fp32 over the images `x`, counting only values
    unsaturated in int8 and, behind a fused ReLU, positive in both (where the pre-activation's error shows).
    `cached[i]`: the fp32 tensor of image i, read before (`_reference_tensors`); images past it are run again.
    `output_only`: `name` is `q_model`'s output, read off the shipped runtime's kernels (`_Runner`)."""
    q = _Runner(q_model, output_only=output_only)
    total = count = None
    for i in range(len(x)):
        q.run(x[i : i + 1])
        a, sat = q.get(name)
        if cached is not None and i < len(cached):
            f = cached[i]
        else:
            ref.run(x[i : i + 1])
            f, _ = ref.get(name)
        if a.shape != f.shape:  # same name, another tensor: never compare across it
            raise EdgeSparseError(f"bias correction: tensor {name!r} is {a.shape} in int8 but {f.shape} in fp32")
        use = ~sat & (a > 0) & (f > 0) if behind_relu else ~sat
        d = np.where(use, a.astype(np.float64) - f, 0.0).sum(0)  # float64: sums of ~10^5 small differences
        total, count = (d, use.sum(0)) if total is None else (total + d, count + use.sum(0))
    return total / np.maximum(count, 1)


def correct_biases(model: bytes, fp32_model: bytes, calib_nhwc: np.ndarray) -> tuple[bytes, str]:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
    Correction", ICCV 2019, sec. 4.2, here with the calibration data): quantisation shifts the mean of each
    output channel of a layer; layer by layer in graph order, with the corrections of the layers before it in
    place, the per-channel mean of (int8 - fp32) on the calibration images is subtracted from the layer's int32
    bias, in that bias's own scale. Compared: the fp32 .tflite of the same SavedModel, tensor by tensor name;
    counted: only values unsaturated in int8 and, behind a fused ReLU, positive in both (the pre-activation's
    error). CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED with an int32 bias and no fused activation or a
    fused ReLU; nothing else changes (ops, scales, weights, I/O, latency). The shifts are read off XNNPACK,
    the runtime the shipped model runs on, with this host's kernels (a device's ARM kernels may round otherwise;
    each layer's tensor is the output of the int8 model cut after it, and the fp32 graph's compared tensors are
    made its outputs), or TFLite's builtin kernels where the delegate refuses a graph; the two round differently,
    so the corrected bytes depend on which ran (and on the CPU's XNNPACK kernels, as the int8 results do). Default rpi4 build, all 10k test images: BENCHMARKS.md
    "Where int8 disagrees with fp32".

    Returns the corrected model and one line saying what was done. Where XNNPACK fails while the correction runs (past
    the graph checks `_Runner` makes when it loads one), the whole correction runs again on the builtin kernels and the
    line says why; where those cannot run a layer's tensors either, the model unchanged and a line saying why the
    correction was skipped."""
    why = lambda e: f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"  # noqa: E731
    try:
        return _correct_biases(model, fp32_model, calib_nhwc)
    except Exception as e:  # noqa: BLE001  (an optional improvement: a failure of any kind leaves the model as is)
        first = why(e)
    try:  # the same correction, read off TFLite's builtin kernels (the old path: whole models, every tensor kept)
        data, note = _correct_biases(model, fp32_model, calib_nhwc, xnnpack=False)
        return data, f"{note}; on TFLite's builtin kernels, as XNNPACK failed ({first})"
    except Exception as e:  # noqa: BLE001
        return model, f"bias correction skipped: {why(e)} (on XNNPACK first: {first})"


def _reference_tensors(ref: _Runner, x: np.ndarray, names: list[str], images: Optional[int]) -> dict[str, list]:
    """name -> its fp32 tensor on each of the first `images` images of `x` (None: as many as
    _REFERENCE_CACHE_BYTES holds): the fp32 reference is the same for every layer corrected, so it runs once per
    image instead of once per layer and image (half the correction's invokes; the int8 model must run again per
    layer, with its earlier layers corrected)."""
    per_image = sum(int(np.prod(ref.det[n]["shape"])) * 4 for n in names)
    n = min(len(x), _REFERENCE_CACHE_BYTES // max(per_image, 1) if images is None else images)
    out: dict[str, list] = {name: [] for name in names}
    for i in range(n):
        ref.run(x[i : i + 1])
        for name in names:
            out[name].append(ref.get(name)[0])
    return out


def _buffer_offsets(model: bytes, buffers: set) -> dict[int, int]:
    """Where each of `buffers`' data starts in the flatbuffer `model` (a Buffer's `data` is its first field)."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    out = {}
    for i in buffers:
        tab = root.Buffers(int(i))._tab
        o = tab.Offset(4)
        if not o:
            raise EdgeSparseError(f"bias correction: buffer {i} holds no data in the flatbuffer")
        out[int(i)] = tab.Vector(o)
    return out


def _up_to(m, k: int) -> bytes:
    """The model object `m` run only as far as its operator `k` (ops are stored in execution order), whose output is
    the graph's: what a layer's correction reads, at the cost of the ops before it (half of the whole model's
    invokes on average; the values are the same, the ops after it never touched them)."""
    ops = m.subgraphs[0].operators
    return _serialized(m, [int(ops[k].outputs[0])], ops[: k + 1])


def _serialized(m, outputs: list, operators: Optional[list] = None) -> bytes:
    """The model object `m` as bytes with `outputs` as its graph's outputs (and only `operators`, if given); `m`
    itself is left as it was."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    g = m.subgraphs[0]
    ops, outs = g.operators, g.outputs
    try:
        g.operators, g.outputs = ops if operators is None else operators, outputs
        return bytes(fu.convert_object_to_bytearray(m))
    finally:
        g.operators, g.outputs = ops, outs


def _correct_biases(model: bytes, fp32_model: bytes, calib_nhwc: np.ndarray,
                    cached_images: Optional[int] = None, truncate: bool = True, xnnpack: bool = True) -> tuple[bytes, str]:
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.convert_bytearray_to_object(bytearray(model))
    g = m.subgraphs[0]
    fm = fu.convert_bytearray_to_object(bytearray(fp32_model))
    fg = fm.subgraphs[0]
    fp32_out = {}  # output tensor name -> (shape, fused activation of the op that writes it); None if the name repeats
    for op in fg.operators:
        t = fg.tensors[int(op.outputs[0])]
        act = getattr(op.builtinOptions, "fusedActivationFunction", _ACT_NONE)
        fp32_out[t.name] = None if t.name in fp32_out else (list(t.shape), act)
    todo, eligible = [], 0  # (op index, output tensor name, fused activation)
    for k, op in enumerate(g.operators):
        code = m.operatorCodes[op.opcodeIndex].builtinCode
        if code not in (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) or len(op.inputs) < 3 or int(op.inputs[2]) < 0:
            continue
        bt = g.tensors[int(op.inputs[2])]
        if bt.type != 2 or m.buffers[bt.buffer].data is None or bt.quantization is None:  # 2: INT32 constant
            continue
        eligible += 1
        t = g.tensors[int(op.outputs[0])]
        act = getattr(op.builtinOptions, "fusedActivationFunction", _ACT_NONE)
        # the fp32 twin: one tensor of that name, the same shape, written by an op with the same fused activation;
        # and one bias per output channel
        if (fp32_out.get(t.name) == (list(t.shape), act) and (act == _ACT_NONE or act in _ACT_RELUS)
                and len(m.buffers[bt.buffer].data) // 4 == int(t.shape[-1])):
            todo.append((k, t.name.decode(), act))
    if not todo:
        return model, (f"bias correction skipped: none of {eligible} conv / fully-connected outputs has a twin in the "
                       f"fp32 graph (same name, shape and fused activation) and a bias per output channel")
    calib_nhwc = calib_nhwc[: max(64, _INVOKE_BUDGET // len(todo))]
    out = bytearray(model)  # corrected in place: a bias keeps its length, so the flatbuffer stays valid as it is
    where = _buffer_offsets(model, {g.tensors[int(g.operators[k].inputs[2])].buffer for k, _, _ in todo})
    if truncate and xnnpack:  # the fp32 graph with the tensors compared as its outputs: XNNPACK runs it (~4x faster)
        names = {name.encode() for _, name, _ in todo}
        ref = _Runner(_serialized(fm, list(dict.fromkeys(int(op.outputs[0]) for op in fg.operators
                                                         if fg.tensors[int(op.outputs[0])].name in names))),
                      output_only=True)
    else:
        ref = _Runner(fp32_model)
    cached = _reference_tensors(ref, calib_nhwc, [name for _, name, _ in todo], cached_images)
    shifts = []
    info = np.iinfo(np.int32)
    for k, name, act in todo:  # `m` and `out` hold the corrections so far, which the next layer runs with
        shift = _mean_shift(_up_to(m, k) if truncate else bytes(out), ref, calib_nhwc, name, act != _ACT_NONE,
                            cached[name], output_only=truncate and xnnpack)
        bt = g.tensors[int(g.operators[k].inputs[2])]
        buf = m.buffers[bt.buffer]
        bias = np.frombuffer(bytes(bytearray(buf.data)), dtype=np.int32).astype(np.float64)
        scale = np.broadcast_to(np.asarray(bt.quantization.scale, dtype=np.float64), bias.shape)
        new = np.clip(np.round(bias - shift / scale), info.min, info.max).astype("<i4").tobytes()
        buf.data = np.frombuffer(new, dtype=np.uint8)
        start = where[bt.buffer]
        out[start : start + len(new)] = new
        shifts.append(float(np.abs(shift).mean()))
    return bytes(out), (f"bias correction on {len(calib_nhwc)} calibration images: {len(shifts)} of {eligible} conv / "
                   f"fully-connected layers, mean |shift| removed {np.mean(shifts):.4f} (largest layer {max(shifts):.4f})")


def int8_for_timing(onnx_fp32: Path, calib_nhwc: np.ndarray) -> bytes:
    """The int8 .tflite that `export` makes, without the bias correction (and so without the fp32 conversion it
    reads): the same ops, shapes and scales, only other int32 bias values, which XNNPACK's kernels take the same time
    over. For timing finalists, where the correction was most of the export's time."""
    tmp = Path(tempfile.mkdtemp(prefix="edge_sparse_onnx2tf_"))
    try:
        sm, _ = _onnx_to_saved_model(onnx_fp32, calib_nhwc, tmp)
        data, _ = _check_loads(_convert_bytes(sm, calib_nhwc), sm)
        return data
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(onnx_fp32: Path, calib_nhwc: np.ndarray, fp32_out: Path | None, int8_out: Path) -> list[str]:
    """Both .tflite files from one onnx2tf conversion (in a throw-away working directory); returns what was done
    beyond the plain conversion (graph rewrites, the bias correction or why it was skipped), one line each."""
    tmp = Path(tempfile.mkdtemp(prefix="edge_sparse_onnx2tf_"))
    try:
        sm, notes = _onnx_to_saved_model(onnx_fp32, calib_nhwc, tmp)
        fp32 = _convert_bytes(sm, None)  # shipped as model_fp32.tflite, and the bias correction's reference
        if fp32_out is not None:
            _io.write_bytes(fp32_out, fp32)
        return [f"onnx2tf input rewritten: {n}" for n in notes] + convert(sm, int8_out, calib_nhwc, fp32_model=fp32)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
