"""ONNX rewrites on the way to onnx2tf, so mobile blocks become full-integer TFLite builtins.

In:  the fp32 ONNX model (as torch exports it at opset 17) and the normalised calibration images (NCHW).
Out: an equivalent ONNX model for onnx2tf only (the shipped ONNX files are not rewritten), and one line per
     kind of rewrite made. Used by `tflite.export`; each rewrite says what went wrong without it:

- exact GELU (x/sqrt2 -> Erf -> +1 -> *x -> *0.5) becomes one `Gelu` node, which onnx2tf emits as
  `tf.nn.gelu` and the converter as the int8 GELU builtin. onnx2tf has this match itself, but compares the
  float32 constant with the float64 1.4142135 and misses on NumPy 1.x; the `Erf` it then emits is a Select
  TF op, and the int8 conversion fails. `Gelu` is an ONNX op from opset 20, so such a model is converted to
  opset 20 first (ONNX's version converter); onnx2tf's shape estimation runs the graph in onnxruntime, which
  needs the op in the default domain.
- HardSwish on a (N, C) tensor (MobileNetV3's classifier head) is done on (N, C, 1, 1): on 2-D, onnx2tf's
  x * relu6(x + 3) / 6 lets the converter fold the +3 into a second copy of the preceding FULLY_CONNECTED
  (twice its MACs, and a layer the shrunk torch model lacks); on 4-D it becomes HARD_SWISH.
- MaxPool with padding onnx2tf cannot express as SAME (PyTorch's symmetric pad 1, or ceil_mode) gets an
  explicit Pad whose value is the pool input's minimum on the calibration images (0 behind a ReLU): onnx2tf
  pads with float32's lowest value, which the int8 calibration takes into that tensor's range (scale
  ~1e36: every activation quantised to zero, and XNNPACK refuses the model). In int8 the input is clamped
  at that minimum anyway, so padding with it is exact there.
- ReduceMean over H and W (`x.mean((2, 3))`) becomes GlobalAveragePool (+ Flatten): from opset 18 its axes
  are an int64 input, which onnx2tf passes on where it keeps the tensor NCHW, and the int8 converter has no
  MEAN for int64 axes (a Select TF op).
- Channel shuffle (Reshape to 5-D, Transpose(0, 2, 1, 3, 4), Reshape back) becomes a Gather of the
  channels with the same permutation: one exact int8 GATHER instead of a 5-D transpose through NHWC.
"""
from __future__ import annotations

import numpy as np

_SQRT2 = float(np.sqrt(2.0))


class _Graph:
    """The model's nodes with producer / consumer maps and constant values (initializers and Constant nodes)."""

    def __init__(self, mp):
        import onnx
        from onnx import numpy_helper

        self.mp = mp
        self.g = mp.graph
        self.nodes = list(self.g.node)  # held, so that id() names a node for as long as this object lives
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        inferred = onnx.shape_inference.infer_shapes(mp)
        self.shapes = {}
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = v.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[v.name] = [d.dim_value for d in dims]
        self.outputs = {o.name for o in self.g.output}
        self.edits: list[tuple[set, list]] = []

    def only_consumer(self, name: str):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.outputs else None

    def scalar(self, name: str):
        v = self.consts.get(name)
        return float(v) if v is not None and v.size == 1 else None

    def other_input(self, node, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    def add_const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.g.initializer.append(numpy_helper.from_array(value, name))
        return name

    def replace(self, drop: list, new: list) -> None:
        """Mark `drop` for removal and `new` to go where the last of them was (inputs are all defined before)."""
        self.edits.append(({id(n) for n in drop}, new))

    def commit(self) -> int:
        """Apply the marked replacements (the nodes are protobuf messages: edit the list once, at the end)."""
        where = {}
        for drop, new in self.edits:
            last = max(i for i, n in enumerate(self.nodes) if id(n) in drop)
            where[last] = new
        dropped = set().union(*(d for d, _ in self.edits)) if self.edits else set()
        nodes = []
        for i, n in enumerate(self.nodes):
            if id(n) not in dropped:
                nodes.append(n)
            nodes.extend(where.get(i, []))
        copies = [type(n)() for n in nodes]  # detached before the repeated field is cleared
        for c, n in zip(copies, nodes):
            c.CopyFrom(n)
        del self.g.node[:]
        self.g.node.extend(copies)
        return len(self.edits)


def _gelu(g: _Graph) -> int:
    from onnx import helper

    count = 0
    for erf in [n for n in g.nodes if n.op_type == "Erf"]:
        div = g.producer.get(erf.input[0])
        if div is None or div.op_type not in ("Div", "Mul") or g.only_consumer(div.output[0]) is not erf:
            continue
        k = g.scalar(div.input[1])
        if k is None or not np.isclose(k, _SQRT2 if div.op_type == "Div" else 1 / _SQRT2, rtol=1e-6):
            continue
        x = div.input[0]
        add = g.only_consumer(erf.output[0])
        if add is None or add.op_type != "Add" or g.scalar(g.other_input(add, erf.output[0])) != 1.0:
            continue
        mul = g.only_consumer(add.output[0])
        if mul is None or mul.op_type != "Mul" or g.other_input(mul, add.output[0]) != x:
            continue
        half = g.only_consumer(mul.output[0])
        if half is None or half.op_type != "Mul" or g.scalar(g.other_input(half, mul.output[0])) != 0.5:
            continue
        g.replace([div, erf, add, mul, half], [helper.make_node("Gelu", [x], [half.output[0]], name=f"{half.name}_gelu")])
        count += 1
    return count


def _to_opset(mp, version: int):
    """`mp` converted to the default domain's opset `version` (ONNX's version converter), if it is older."""
    import onnx

    have = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), version)
    return mp if have >= version else onnx.version_converter.convert_version(mp, version)


def _hardswish_2d(g: _Graph) -> int:
    from onnx import helper

    count = 0
    for n in [n for n in g.nodes if n.op_type == "HardSwish"]:
        shape = g.shapes.get(n.input[0])
        if shape is None or len(shape) != 2:
            continue
        x, y = n.input[0], n.output[0]
        s4 = g.add_const(f"{n.name}_s4", np.array([shape[0], shape[1], 1, 1], np.int64))
        s2 = g.add_const(f"{n.name}_s2", np.array(shape, np.int64))
        g.replace([n], [helper.make_node("Reshape", [x, s4], [f"{y}_4d_in"], name=f"{n.name}_to4d"),
                          helper.make_node("HardSwish", [f"{y}_4d_in"], [f"{y}_4d"], name=n.name),
                          helper.make_node("Reshape", [f"{y}_4d", s2], [y], name=f"{n.name}_to2d")])
        count += 1
    return count


def _spatial_means(g: _Graph) -> int:
    from onnx import helper

    count = 0
    for n in [n for n in g.nodes if n.op_type == "ReduceMean"]:
        shape = g.shapes.get(n.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = attrs.get("axes") if len(n.input) < 2 else g.consts.get(n.input[1])
        if shape is None or len(shape) != 4 or axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        y = n.output[0]
        if attrs.get("keepdims", 1):
            g.replace([n], [helper.make_node("GlobalAveragePool", [n.input[0]], [y], name=n.name)])
        else:
            g.replace([n], [helper.make_node("GlobalAveragePool", [n.input[0]], [f"{y}_4d"], name=n.name),
                            helper.make_node("Flatten", [f"{y}_4d"], [y], name=f"{n.name}_flatten", axis=1)])
        count += 1
    return count


def _pool_pads(size: int, k: int, s: int, b: int, e: int, ceil: bool) -> tuple[int, int]:
    """(begin, end) padding that gives PyTorch's / ONNX's MaxPool output size without ceil_mode."""
    span = size + b + e - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + b:  # the last window must start inside the input or the left padding
        out -= 1
    return b, max(e, (out - 1) * s + k - size - b)


def _tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _max_pools(g: _Graph, calib_nchw: np.ndarray) -> int:
    from onnx import helper

    todo = []
    for n in g.nodes:
        if n.op_type != "MaxPool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        shape = g.shapes.get(n.input[0])
        k, s = list(attrs["kernel_shape"]), list(attrs.get("strides", [1] * len(attrs["kernel_shape"])))
        if shape is None or len(k) != 2 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
                or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            continue
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        ceil = bool(attrs.get("ceil_mode", 0))
        want = [_pool_pads(shape[2 + i], k[i], s[i], pads[i], pads[i + 2], ceil) for i in range(2)]
        if all(w == (0, 0) for w in want):
            continue
        if all(w == _tf_same_pads(shape[2 + i], k[i], s[i]) for i, w in enumerate(want)):
            if ceil:  # the same pool without ceil_mode: onnx2tf makes that a SAME pool, which pads no value in
                keep = {a: v for a, v in attrs.items() if a not in ("pads", "ceil_mode")}
                g.replace([n], [helper.make_node("MaxPool", list(n.input), list(n.output), name=n.name,
                                                 pads=[want[0][0], want[1][0], want[0][1], want[1][1]], **keep)])
            continue
        todo.append((n, attrs, want))
    if not todo:
        return 0
    lows = _calibrated_minima(g, [n.input[0] for n, _, _ in todo], calib_nchw)
    for (n, attrs, want), low in zip(todo, lows):
        prod = g.producer.get(n.input[0])
        value = 0.0 if prod is not None and prod.op_type == "Relu" else low
        p = g.add_const(f"{n.name}_pads", np.array([0, 0, want[0][0], want[1][0], 0, 0, want[0][1], want[1][1]],
                                                   np.int64))
        v = g.add_const(f"{n.name}_pad_value", np.array(value, np.float32))
        keep = {a: v_ for a, v_ in attrs.items() if a not in ("pads", "ceil_mode", "auto_pad")}
        g.replace([n], [helper.make_node("Pad", [n.input[0], p, v], [f"{n.output[0]}_padded"], name=f"{n.name}_pad",
                                           mode="constant"),
                          helper.make_node("MaxPool", [f"{n.output[0]}_padded"], list(n.output), name=n.name, **keep)])
    return len(todo)


def _calibrated_minima(g: _Graph, names: list[str], calib_nchw: np.ndarray) -> list[float]:
    """The minimum of each named tensor over the calibration images (onnxruntime on the unrewritten model)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(g.mp)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    lows = np.full(len(names), np.inf)
    for i in range(len(calib_nchw)):
        outs = sess.run(names, {inp: calib_nchw[i : i + 1]})
        lows = np.minimum(lows, [float(o.min()) for o in outs])
    return [float(v) for v in lows]


def _value_info(name: str):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _channel_shuffles(g: _Graph) -> int:
    from onnx import helper

    count = 0
    for r1 in [n for n in g.nodes if n.op_type == "Reshape"]:
        # (N, C, H, W) -> (N, g, C/g, H, W) -> transpose 1, 2 -> (N, C, H, W); shapes read from the Reshapes'
        # constants (shape inference loses them behind torch's chunk/split)
        x = r1.input[0]
        s5 = g.consts.get(r1.input[1])
        if s5 is None or s5.ndim != 1 or len(s5) != 5 or (s5 <= 0).any():
            continue
        n_, groups, per, h, w = (int(v) for v in s5)
        c = groups * per
        if g.shapes.get(x) not in (None, [n_, c, h, w]):
            continue
        tr = g.only_consumer(r1.output[0])
        if tr is None or tr.op_type != "Transpose" or list(helper.get_attribute_value(tr.attribute[0])) != [0, 2, 1, 3, 4]:
            continue
        r2 = g.only_consumer(tr.output[0])
        s4 = None if r2 is None or r2.op_type != "Reshape" else g.consts.get(r2.input[1])
        if s4 is None or [int(v) for v in s4] != [n_, c, h, w]:
            continue
        perm = np.arange(c).reshape(groups, c // groups).T.ravel().astype(np.int64)
        idx = g.add_const(f"{r1.name}_shuffle", perm)
        g.replace([r1, tr, r2], [helper.make_node("Gather", [x, idx], list(r2.output), name=f"{r1.name}_gather",
                                                    axis=1)])
        count += 1
    return count


def _simplify(mp):
    """onnx-simplifier, in this process: folds shape arithmetic (torch's chunk/split export Shape -> Gather -> Div ->
    Slice) into constants. onnx2tf would run it as an `onnxsim` command, found on PATH or not (then skipped, and the
    Slices it converts from the shape arithmetic cut the NHWC tensor along the wrong axis), overwriting its input."""
    import onnxsim

    try:
        out, ok = onnxsim.simplify(mp)
    except Exception as e:  # noqa: BLE001  (onnxsim raises plain Exceptions / RuntimeErrors of its own)
        return mp, f"onnxsim failed ({type(e).__name__}: {' '.join(str(e).split())[:120]}); converted unsimplified"
    return (out, None) if ok else (mp, "onnxsim's result did not check out against the input; converted unsimplified")


def for_onnx2tf(mp, calib_nchw: np.ndarray):
    """(rewritten copy of `mp`, one line per kind of rewrite made); `mp` itself is not changed."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(mp)
    out, note = _simplify(out)
    notes = [note] if note else []
    if any(n.op_type == "Erf" for n in out.graph.node):  # Gelu is an ONNX op from opset 20
        out = _to_opset(out, 20)
    for what, fn in (("exact GELU -> Gelu", _gelu), ("2-D HardSwish done in 4-D", _hardswish_2d),
                     ("spatial ReduceMean -> GlobalAveragePool", _spatial_means),
                     ("channel shuffle -> Gather", _channel_shuffles),
                     ("padded or ceil_mode MaxPool made explicit", lambda g: _max_pools(g, calib_nchw))):
        g = _Graph(out)
        fn(g)
        n = g.commit()
        if n:
            notes.append(f"{what}: {n}")
    return out, notes
