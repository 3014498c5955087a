"""Artifact lint for a .tflite: op histogram, I/O dtypes, no Flex/custom ops, no float compute in int8,
and every conv's channel counts equal to the shrunk torch model's (so an export can never silently
keep the dense widths, cf. ultralytics #16806).

In:  a .tflite file, and optionally the torch model's per-layer stats (`prune.profile`).
Out: `LintReport` (numbers and lists), `.problems()` lists what fails; `check()` raises on any.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from edge_sparse.errors import EdgeSparseError, GateError
from edge_sparse.latency.ops import conv2d_kind

# Ops that may carry float tensors in an int8 model; empty on purpose: full-integer means full.
FLOAT_OP_ALLOW: frozenset[str] = frozenset()
WEIGHTED = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "linear"}


@dataclass
class LintReport:
    path: str
    ops: dict[str, int]  # op name -> count
    input_dtype: str
    output_dtype: str
    custom_ops: list[str] = field(default_factory=list)  # Flex / custom op names
    float_ops: list[str] = field(default_factory=list)  # compute ops with float32 tensors (int8 model)
    layers: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, out, in) per weighted op
    channel_mismatch: Optional[str] = None

    def problems(self, int8: bool = True) -> list[str]:
        p = []
        if self.custom_ops:
            p.append(f"custom/Flex ops {sorted(set(self.custom_ops))} (the device runtime lacks them)")
        if int8:
            if self.input_dtype != "INT8" or self.output_dtype != "INT8":
                p.append(f"I/O is {self.input_dtype}/{self.output_dtype}; full-integer models must take and give INT8")
            bad = sorted(set(self.float_ops) - FLOAT_OP_ALLOW)
            if bad:
                p.append(f"float compute ops in the int8 model: {bad}")
        if self.channel_mismatch:
            p.append(self.channel_mismatch)
        return p

    def to_dict(self) -> dict:
        return asdict(self)


def lint(path: Path, torch_layers: Optional[Sequence] = None) -> LintReport:
    from tensorflow.lite.python import schema_py_generated as s

    path = Path(path)
    try:
        buf = path.read_bytes()
        m = s.Model.GetRootAsModel(buf, 0)
        g = m.Subgraphs(0)
    except Exception as e:
        raise EdgeSparseError(f"{path}: not a readable .tflite flatbuffer ({type(e).__name__})") from None
    op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    ops, custom, floats, layers = Counter(), [], [], []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        c = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(c, str(c))
        if name == "CUSTOM":
            name = (code.CustomCode() or b"?").decode()
            custom.append(name)
        ops[name] += 1
        tensors = [g.Tensors(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        tensors += [g.Tensors(op.Outputs(j)) for j in range(op.OutputsLength())]
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(types[t.Type()] == "FLOAT32" for t in tensors):
            floats.append(name)
        if name in WEIGHTED:
            w = g.Tensors(op.Inputs(1)).ShapeAsNumpy().tolist()
            if name == "DEPTHWISE_CONV_2D":  # with a depth multiplier (out != in) it is a grouped conv in torch
                cin = int(g.Tensors(op.Inputs(0)).ShapeAsNumpy()[-1])
                layers.append(("dwconv", w[3], w[3]) if w[3] == cin else ("conv", w[3], cin))
            elif name == "CONV_2D":  # input channels from the input: a grouped conv's filter holds in / groups
                cin = int(g.Tensors(op.Inputs(0)).ShapeAsNumpy()[-1])
                kind, _ = conv2d_kind(w, cin)  # a conv in `cin` groups of one channel is depthwise
                layers.append((kind, w[0], cin))
            else:
                layers.append(("linear", w[0], w[1]))
    rep = LintReport(str(path), dict(ops), types[g.Tensors(g.Inputs(0)).Type()], types[g.Tensors(g.Outputs(0)).Type()],
                     custom, floats, layers)
    if torch_layers is not None:
        want = Counter((l.kind, l.out_channels, l.in_channels if l.kind != "dwconv" else l.out_channels) for l in torch_layers)
        got = Counter(layers)
        if want != got:
            missing, extra = want - got, got - want
            rep.channel_mismatch = (f"conv/linear channel counts differ from the shrunk torch model: "
                                    f"torch-only {sorted(missing.elements())[:4]}, tflite-only {sorted(extra.elements())[:4]}")
    return rep


def check(path: Path, torch_layers: Optional[Sequence] = None, int8: bool = True) -> LintReport:
    rep = lint(path, torch_layers)
    probs = rep.problems(int8)
    if probs:
        raise GateError(f"{path}: lint failed: " + "; ".join(probs))
    return rep
