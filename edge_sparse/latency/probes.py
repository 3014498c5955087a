"""Probe models: one int8 op per `.tflite`, built with TensorFlow's converter, timed by the real runtime.

In:  `Op`s (edge_sparse.latency.ops) whose cost a latency table needs.
Out: a probe suite directory (`probes.json` + one `.tflite` per op, plus the `overhead` probe: a
     3x3x8 PAD whose own work is nil, so its time is the runtime's fixed per-invoke cost); timings in
     the harness's `edge_sparse.probe_timings/1` JSON.
Run: `write_suite(ops, dir)`, then `time_suite(dir, threads)` here (the bundle's harness, `bench.py
     --probes DIR`, in a subprocess) or the same harness on a device (edge_sparse.latency.device).

Each probe is full-integer int8 with int8 input and output, like the shipped model, so XNNPACK takes
the same int8 kernels (conv + fused activation, grouped and depthwise, ADD, MEAN, PAD, pooling, FULLY_CONNECTED,
HARD_SWISH, LOGISTIC, GELU, MUL, the SE gate's broadcast MUL, CONCATENATION, SPLIT, a channel shuffle's GATHER).
Converting one op with `TFLiteConverter.from_concrete_functions` takes ~0.05 s (onnx2tf takes ~8 s
per model), so a few hundred probes are built in seconds.

Three ops cost something else in a model than alone, so they are probed in their context and priced as that
probe less the probe of the context without them (`baseline`; the suite entry's `minus`), measured on the
2-core Xeon (AVX-512 VNNI, ai-edge-litert 2.1):
- HARD_SWISH: XNNPACK does not run it in int8 (its probe times the same with the delegate and without), so in a
  model it splits the delegate's partition in two, ~20 us more per op than its probe alone (one hard-swish put
  into a ReLU MobileNetV3 at 96x96x16: +0.502 ms in the model, 0.478 alone; at 12x12x576: +0.291 vs 0.270; a
  MobileNetV3 with 11 of them measured 12 % over the sum of its standalone probes). Probed between two 1x1
  convs, less the two convs. GELU likewise (XNNPACK leaves it too; +35 % in context, 0.018 vs 0.013 ms at 48x48x32).
  (AVERAGE_POOL_2D, STRIDED_SLICE and GATHER are left to the builtin kernels as well, but change their tensor's
  shape; they are still probed alone.)
- the MUL of a SiLU, x * sigmoid(x): XNNPACK runs the pair for the price of its LOGISTIC (x * sigmoid(x) alone
  0.0122 ms at 96x96x16, the LOGISTIC alone 0.0122, a MUL of two inputs 0.030: pricing it as a MUL put a
  SiLU TinyNet 13 % over its measured time). Probed as the SiLU, less its LOGISTIC.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import Op

SUITE_FORMAT = "edge_sparse.probes/1"
TIMINGS_FORMAT = "edge_sparse.probe_timings/1"
OVERHEAD = Op("pad", 1, 1, 8, 8, k=3, name="overhead")
HARNESS = Path(__file__).resolve().parent.parent / "harness" / "bench.py"
# what a probe is built as (the context probes above, since 2): a host table cached by an older version is re-probed
VERSION = 2


def baseline(op: Op) -> Optional[Op]:
    """The probe `op`'s probe is timed less, for the ops priced in context (module docstring); None for the rest."""
    if not priced_in_context(op.key):
        return None
    return Op("sigmoid" if op.kind == "mul" else "pwpair", op.h, op.w, op.cin, op.cin)


def priced_in_context(key: str) -> bool:
    """Whether a table entry keyed `key` was probed in context: a difference of two probes (its p90 a difference of two
    tails), not one probe's time, so the tail curve and the drift check leave it out."""
    parts = key.split(":")
    return parts[0] in ("hardswish", "gelu", "layernorm") or (parts[0] == "mul" and parts[-1] == "silu")


def build_probe(op: Op, seed: int = 0) -> bytes:
    """A full-integer int8 `.tflite` holding `op` alone (its inputs and output int8)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    act = {"none": lambda y: y, "relu": tf.nn.relu, "relu6": tf.nn.relu6, "silu": lambda y: y}[op.act]
    pad = "VALID" if op.stride > 1 and not op.same else "SAME"
    spec = [tf.TensorSpec([1, op.h, op.w, op.cin], tf.float32)]
    if op.kind == "conv":  # grouped when op.groups > 1: TFLite's CONV_2D takes a filter of cin / groups inputs
        cg = op.cin // op.groups
        w = tf.constant(rng.standard_normal((op.k, op.k, cg, op.cout)).astype(np.float32) / np.sqrt(op.k * op.k * cg))
        b = tf.constant(rng.standard_normal(op.cout).astype(np.float32) * 0.1)
        fn = lambda x: act(tf.nn.conv2d(x, w, op.stride, pad) + b)  # noqa: E731
    elif op.kind == "dwconv":
        w = tf.constant(rng.standard_normal((op.k, op.k, op.cin, 1)).astype(np.float32) / op.k)
        b = tf.constant(rng.standard_normal(op.cin).astype(np.float32) * 0.1)
        fn = lambda x: act(tf.nn.depthwise_conv2d(x, w, [1, op.stride, op.stride, 1], pad) + b)  # noqa: E731
    elif op.kind == "pad":
        p = (op.k - 1) // 2
        fn = lambda x: tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])  # noqa: E731
    elif op.kind == "add":
        spec = spec * 2
        fn = lambda x, y: act(x + y)  # noqa: E731
    elif op.kind == "mean":
        fn = lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # noqa: E731
    elif op.kind == "fc":
        w = tf.constant(rng.standard_normal((op.cin, op.cout)).astype(np.float32) / np.sqrt(op.cin))
        b = tf.constant(rng.standard_normal(op.cout).astype(np.float32) * 0.1)
        if op.h * op.w == 1:
            spec = [tf.TensorSpec([1, op.cin], tf.float32)]
            fn = lambda x: act(tf.matmul(x, w) + b)  # noqa: E731
        else:  # a Linear on every pixel of a channels-last feature map (ConvNeXt): FULLY_CONNECTED over H*W rows
            fn = lambda x: act(tf.reshape(tf.matmul(tf.reshape(x, [-1, op.cin]), w) + b,  # noqa: E731
                                          [1, op.h, op.w, op.cout]))
    elif op.kind in ("maxpool", "avgpool"):
        pool = tf.nn.max_pool2d if op.kind == "maxpool" else tf.nn.avg_pool2d
        fn = lambda x: pool(x, op.k, op.stride, pad)  # noqa: E731
    elif op.kind == "relu":  # also stands in for RELU_0_TO_1 (a hard-sigmoid's clamp), which the converter won't emit
        fn = tf.nn.relu
    elif op.kind in ("hardswish", "gelu", "layernorm", "pwpair"):  # between two 1x1 convs (pwpair: the convs alone)
        w1, w2 = (tf.constant(rng.standard_normal((1, 1, op.cin, op.cin)).astype(np.float32) / np.sqrt(op.cin))
                  for _ in range(2))
        gamma, beta = (tf.constant(rng.uniform(0.5, 1.5, op.cin).astype(np.float32)),
                       tf.constant(rng.standard_normal(op.cin).astype(np.float32) * 0.1))

        def layer_norm(y):  # over the channels, as onnx2tf writes an ONNX LayerNormalization (its ten ops)
            mean = tf.reduce_mean(y, axis=-1, keepdims=True)
            rg = tf.math.rsqrt(tf.reduce_mean(tf.math.squared_difference(y, mean), axis=-1, keepdims=True) + 1e-6) * gamma
            return y * rg + (beta - mean * rg)

        # the converter fuses x * relu6(x + 3) / 6 into HARD_SWISH
        mid = {"hardswish": lambda y: y * tf.nn.relu6(y + 3.0) * (1.0 / 6.0), "pwpair": lambda y: y,
               "gelu": lambda y: tf.nn.gelu(y, approximate=True), "layernorm": layer_norm}[op.kind]
        fn = lambda x: tf.nn.conv2d(mid(tf.nn.conv2d(x, w1, 1, "SAME")), w2, 1, "SAME")  # noqa: E731
    elif op.kind == "sigmoid":
        fn = tf.sigmoid
    elif op.kind == "mul" and op.act == "silu":
        fn = lambda x: x * tf.sigmoid(x)  # noqa: E731
    elif op.kind == "mul":
        spec = spec * 2
        fn = lambda x, y: x * y  # noqa: E731
    elif op.kind == "mulc":  # the squeeze-and-excitation gate: (1, H, W, C) * (1, 1, 1, C)
        spec = spec + [tf.TensorSpec([1, 1, 1, op.cin], tf.float32)]
        fn = lambda x, y: x * y  # noqa: E731
    elif op.kind == "concat":  # its inputs as equal parts (two halves: a shuffle unit's, a fire module's; how the
        # channels are shared barely moves the cost, how many tensors there are does: `Op.inputs`)
        n = max(2, op.inputs)
        if op.cin < n:
            raise EdgeSparseError(f"no probe for {op.key}: {n} inputs cannot share {op.cin} channels")
        parts = [op.cin // n] * (n - 1) + [op.cin - (n - 1) * (op.cin // n)]
        spec = [tf.TensorSpec([1, op.h, op.w, c], tf.float32) for c in parts]
        fn = lambda *xs: tf.concat(list(xs), 3)  # noqa: E731
    elif op.kind == "slice":  # one half of a 2c-channel tensor (a chunk(2) piece)
        spec = [tf.TensorSpec([1, op.h, op.w, 2 * op.cin], tf.float32)]
        fn = lambda x: x[:, :, :, op.cin:]  # noqa: E731
    elif op.kind == "split":
        fn = lambda x: tuple(tf.split(x, 2, 3))  # noqa: E731
    elif op.kind == "transpose":  # NHWC -> NCHW, the layout change onnx2tf writes around some ops
        fn = lambda x: tf.transpose(x, [0, 3, 1, 2])  # noqa: E731
    elif op.kind == "shuffle":  # a channel shuffle as the exporter writes it: a GATHER of the channels
        g = max(2, op.groups)
        perm = tf.constant(np.arange(op.cin).reshape(g, op.cin // g).T.reshape(-1).astype(np.int32))
        fn = lambda x: tf.gather(x, perm, axis=3)  # noqa: E731
    else:
        raise EdgeSparseError(f"no probe for op kind {op.kind!r}")
    return convert(fn, spec, seed, op.key)


def convert(fn, spec: list, seed: int = 0, what: str = "a probe") -> bytes:
    """`fn` over inputs shaped `spec` (tf.TensorSpecs) as a full-integer int8 `.tflite`, int8 inputs and output."""
    import tensorflow as tf

    # autograph off: the graph is plain TF ops, and reading these lambdas' source warns (several per line)
    f = tf.function(fn, input_signature=spec, autograph=False)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8

    def representative():
        r = np.random.default_rng(seed + 1)
        for _ in range(4):
            yield [r.standard_normal(tuple(s.shape)).astype(np.float32) for s in spec]

    conv.representative_dataset = representative
    with _silenced():
        try:
            return conv.convert()
        except Exception as e:  # noqa: BLE001 - the converter raises many types
            raise EdgeSparseError(f"could not build a probe for {what}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None


@contextlib.contextmanager
def _silenced():
    """The converter prints from C++ straight to fds 1 and 2: silence them at the fd level."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def probe_name(op: Op) -> str:
    return "overhead" if op == OVERHEAD else hashlib.sha256(op.key.encode()).hexdigest()[:12]


def write_suite(ops: Iterable[Op], directory: Path) -> Path:
    """Probe `.tflite`s for `ops` (deduplicated by key) + the overhead probe, and `probes.json`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    entries, seen = [], set()
    ops = [o.replace(name="") for o in ops]
    for op in [OVERHEAD.replace(name=""), *ops, *(b for b in map(baseline, ops) if b is not None)]:
        if op.key in seen:
            continue
        seen.add(op.key)
        name = probe_name(OVERHEAD if op == OVERHEAD.replace(name="") else op)
        data = build_probe(op)
        (d / f"{name}.tflite").write_bytes(data)
        entries.append({"name": name, "file": f"{name}.tflite", "sha256": hashlib.sha256(data).hexdigest(),
                        "key": op.key, "op": {k: v for k, v in op.__dict__.items() if k != "name"}})
        if baseline(op) is not None:
            entries[-1]["minus"] = probe_name(baseline(op))
    _io.write_json(d / "probes.json", {"format": SUITE_FORMAT, "probes": entries})
    return d


def cached_suite(ops: Iterable[Op], parent: Path, prefix: str = "probes-", log=None) -> tuple[Path, dict]:
    """`write_suite` for `ops`, built once under `parent`/<prefix><hash of their keys and VERSION> (a later call with
    the same shapes reuses it); the suite's directory and its probes.json."""
    need: dict = {}
    for o in ops:
        need.setdefault(o.key, o)
    key = json.dumps([VERSION, *sorted(need)])
    suite_dir = Path(parent) / (prefix + hashlib.sha256(key.encode()).hexdigest()[:12])
    if not (suite_dir / "probes.json").is_file():
        if log:
            log(f"building {len(need)} probes (one int8 op each) ...")
        with _io.atomic_dir(suite_dir) as tmp:
            write_suite(need.values(), tmp)
    return suite_dir, json.loads((suite_dir / "probes.json").read_text())


def time_suite(directory: Path, threads: int, *, runs: int = 100, rounds: int = 5, runtime: Optional[str] = None,
               python: str = sys.executable, timeout: float = 900) -> dict:
    """Time a probe suite on this host with the bundle's own harness (`bench.py --probes`)."""
    with tempfile.TemporaryDirectory(prefix="edge_sparse_probe_") as tmp:
        out = Path(tmp) / "timings.json"
        cmd = [python, str(HARNESS), "--probes", str(directory), "--threads", str(threads), "--runs", str(runs),
               "--rounds", str(rounds), "--json", str(out)] + (["--runtime", runtime] if runtime else [])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeSparseError(f"timing the probe suite {directory} took over {timeout:.0f} s") from None
        if r.returncode != 0 or not out.is_file():
            last = (r.stderr or r.stdout).strip().splitlines()
            raise EdgeSparseError(f"bench.py --probes {directory} failed (exit {r.returncode}): "
                                  f"{last[-1] if last else 'no output'}")
        return json.loads(out.read_text())
