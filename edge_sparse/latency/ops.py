"""The int8 TFLite ops a PyTorch model becomes, read off the model without exporting it.

In:  an `nn.Module` and an example input (NCHW), or a `.tflite` file.
Out: `Op`s in execution order, as XNNPACK runs the int8 graph our exporter (onnx2tf) produces:
     CONV_2D / DEPTHWISE_CONV_2D with BatchNorm folded and ReLU/ReLU6 fused, an explicit PAD before a
     strided padded conv (onnx2tf keeps PyTorch's symmetric padding that way), ADD (with a fused ReLU
     when one follows), MEAN for global average pooling, MAX/AVERAGE_POOL_2D, FULLY_CONNECTED.
Run: `extract_ops(model, example)`; `tflite_ops(path)` reads the same list from an exported model,
     which the tests use to check the mapping on every registered architecture.

Why not export every candidate: onnx2tf takes ~8 s per model, and the search prices thousands of
width choices; tracing takes milliseconds. Channel pruning changes widths, never the op graph.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_sparse.errors import EdgeSparseError

KINDS = ("conv", "dwconv", "pad", "add", "mean", "fc", "maxpool", "avgpool", "relu")
TFLITE_KIND = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "PAD": "pad", "ADD": "add", "MEAN": "mean",
               "FULLY_CONNECTED": "fc", "MAX_POOL_2D": "maxpool", "AVERAGE_POOL_2D": "avgpool", "RELU": "relu",
               "RELU6": "relu"}


@dataclass(frozen=True)
class Op:
    """One int8 op: input H×W×C, output channels, kernel, stride, and its fused activation."""

    kind: str  # one of KINDS
    h: int  # input height (for "fc": 1)
    w: int  # input width
    cin: int  # input channels (features for "fc")
    cout: int  # output channels (== cin for pad/add/mean/pool/relu/dwconv)
    k: int = 1  # kernel size (square); pooling window for pools
    stride: int = 1
    act: str = "none"  # fused activation: none | relu | relu6
    name: str = ""  # the module (or node) it comes from; not part of the key

    @property
    def key(self) -> str:
        """The shape signature a latency table is keyed by (widths included, name excluded)."""
        return f"{self.kind}:{self.h}x{self.w}:{self.cin}>{self.cout}:k{self.k}s{self.stride}:{self.act}"

    @property
    def family(self) -> str:
        """The key without channel counts: ops of one family differ only in widths."""
        return f"{self.kind}:{self.h}x{self.w}:k{self.k}s{self.stride}:{self.act}"

    @property
    def macs(self) -> int:
        if self.kind == "conv":
            return self.out_h * self.out_w * self.cout * self.cin * self.k * self.k
        if self.kind == "dwconv":
            return self.out_h * self.out_w * self.cout * self.k * self.k
        if self.kind == "fc":
            return self.cin * self.cout
        return 0

    @property
    def out_h(self) -> int:
        if self.kind == "pad":
            return self.h + 2 * ((self.k - 1) // 2)
        if self.kind in ("mean", "fc"):
            return 1
        return (self.h - self.k) // self.stride + 1 if self._valid else -(-self.h // self.stride)

    @property
    def out_w(self) -> int:
        if self.kind == "pad":
            return self.w + 2 * ((self.k - 1) // 2)
        if self.kind in ("mean", "fc"):
            return 1
        return (self.w - self.k) // self.stride + 1 if self._valid else -(-self.w // self.stride)

    @property
    def _valid(self) -> bool:
        # a strided padded conv follows its own PAD op, so it runs VALID; everything else keeps SAME shape
        return self.stride > 1 and self.kind in ("conv", "dwconv", "maxpool", "avgpool")

    def cls(self) -> str:
        """Coarse op class, for per-class device factors: conv1x1 | conv3x3 | convkxk | dwconv | fc | add | pool | mean | pad | relu."""
        if self.kind == "conv":
            return "conv1x1" if self.k == 1 else ("conv3x3" if self.k == 3 else "convkxk")
        if self.kind in ("maxpool", "avgpool"):
            return "pool"
        return self.kind

    def replace(self, **kw) -> "Op":
        return Op(**{**asdict(self), **kw})


def _act_of(node) -> Optional[str]:
    """'relu'/'relu6' when `node` is a ReLU/ReLU6 (module, function or method), else None."""
    if node.op == "call_module":
        m = node.graph.owning_module.get_submodule(node.target)
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
    elif node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh and node.args[1:3] == (0.0, 6.0):
            return "relu6"
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


_PASSTHROUGH_MODULES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.Flatten, nn.Dropout, nn.Identity, nn.Sequential)
_PASSTHROUGH_FUNCS = {torch.flatten, F.dropout}
_PASSTHROUGH_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "size"}


def extract_ops(model: nn.Module, example: torch.Tensor) -> list[Op]:
    """The int8 TFLite ops `model` exports to, for one NCHW image shaped like `example`."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    model = model.eval()
    try:
        gm = symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(example[:1])
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same user-facing problem
        raise EdgeSparseError(
            f"cannot trace {type(model).__name__} with torch.fx to price its layers "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the latency table needs a traceable "
            f"forward (no data-dependent control flow)") from None

    def shape(n) -> tuple:
        meta = n.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    ops: list[Op] = []
    producer: dict = {}  # fx node -> index in `ops` of the op that produced its value (for fusing)

    def emit(node, op: Op) -> None:
        producer[node] = len(ops)
        ops.append(op)

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        ins = shape(src) if src is not None else ()
        act = _act_of(node)
        if act is not None:
            i = producer.get(src)
            if i is not None and ops[i].act == "none" and ops[i].kind in ("conv", "dwconv", "add", "fc") \
                    and len(src.users) == 1:
                ops[i] = ops[i].replace(act=act)
                producer[node] = i
            else:
                _, c, h, w = ins
                emit(node, Op("relu", h, w, c, c, act="none", name=node.name))
            continue
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.Conv2d):
                _, c, h, w = ins
                k, s, p = m.kernel_size[0], m.stride[0], m.padding
                if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] or m.dilation != (1, 1):
                    raise EdgeSparseError(f"layer {node.target}: only square, undilated kernels are priced "
                                          f"(kernel {m.kernel_size}, stride {m.stride}, dilation {m.dilation})")
                pad = p[0] if isinstance(p, tuple) else 0
                dw = m.groups > 1 and m.groups == m.in_channels and m.out_channels == m.in_channels
                if m.groups > 1 and not dw:
                    raise EdgeSparseError(f"layer {node.target}: grouped conv with groups={m.groups} (not depthwise) "
                                          f"has no int8 XNNPACK kernel class here")
                if s > 1 and pad > 0:
                    emit(node, Op("pad", h, w, c, c, k=2 * pad + 1, name=f"{node.target}.pad"))
                    h, w = h + 2 * pad, w + 2 * pad
                emit(node, Op("dwconv" if dw else "conv", h, w, c, m.out_channels, k, s, name=node.target))
            elif isinstance(m, nn.Linear):
                emit(node, Op("fc", 1, 1, m.in_features, m.out_features, name=node.target))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                _, c, h, w = ins
                if tuple(shape(node)[2:]) != (1, 1):
                    raise EdgeSparseError(f"layer {node.target}: adaptive pooling to {shape(node)[2:]} is not priced "
                                          f"(only global average pooling, output 1x1)")
                emit(node, Op("mean", h, w, c, c, name=node.target))
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                _, c, h, w = ins
                k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
                s = m.stride if isinstance(m.stride, int) else (m.stride[0] if m.stride else k)
                emit(node, Op("maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool", h, w, c, c, k, s, name=node.target))
            elif isinstance(m, _PASSTHROUGH_MODULES):
                if src in producer:
                    producer[node] = producer[src]
            else:
                raise EdgeSparseError(f"layer {node.target}: no latency class for {type(m).__name__}; priced ops are "
                                      f"Conv2d, Linear, pooling, ReLU/ReLU6, BatchNorm (folded) and additions")
        elif node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd):
            a = shape(node)
            if len(a) == 4:
                emit(node, Op("add", a[2], a[3], a[1], a[1], name=node.name))
            elif len(a) == 2:
                emit(node, Op("add", 1, 1, a[1], a[1], name=node.name))
        elif node.op == "call_function" and node.target in (torch.mean, F.adaptive_avg_pool2d):
            _, c, h, w = ins
            emit(node, Op("mean", h, w, c, c, name=node.name))
        elif node.op == "call_method" and node.target == "mean":
            _, c, h, w = ins
            emit(node, Op("mean", h, w, c, c, name=node.name))
        elif (node.op == "call_function" and node.target in _PASSTHROUGH_FUNCS) or \
                (node.op == "call_method" and node.target in _PASSTHROUGH_METHODS) or \
                (node.op == "call_function" and node.target is getattr):
            if src in producer:
                producer[node] = producer[src]
        else:
            raise EdgeSparseError(f"node {node.name} ({node.op} {getattr(node.target, '__name__', node.target)}): "
                                  f"no latency class for it; priced ops are convs, linear, pooling, ReLU/ReLU6, "
                                  f"BatchNorm (folded) and additions")
    return ops


def tflite_ops(path: Path | str) -> list[Op]:
    """The compute ops of an exported .tflite, in execution order (QUANTIZE/DEQUANTIZE/RESHAPE skipped)."""
    from edge_sparse.verify import tflite_interpreter

    it = tflite_interpreter(Path(path), 1)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for d in it._get_ops_details():
        kind = TFLITE_KIND.get(d["op_name"])
        if kind is None:
            continue
        x = tuple(tensors[d["inputs"][0]]["shape"])
        y = tuple(tensors[d["outputs"][0]]["shape"])
        if kind == "fc":
            out.append(Op("fc", 1, 1, int(x[-1]), int(y[-1])))
            continue
        k, s = 1, 1
        if kind in ("conv", "dwconv"):
            wshape = tuple(tensors[d["inputs"][1]]["shape"])
            k = int(wshape[1])
            s = max(1, round(x[1] / y[1])) if x[1] != y[1] else 1
            if y[1] == (x[1] - k) // 2 + 1 and x[1] != y[1]:
                s = 2
        elif kind == "pad":
            k = int(y[1] - x[1]) + 1
        elif kind in ("maxpool", "avgpool") and x[1] != y[1]:
            # pool options are not in the op details: infer the window from the shapes (k = stride, the
            # only pooling the model registry uses; a 3x3/2 pool is priced as 2x2/2, within its noise)
            k = s = max(1, round(x[1] / y[1]))
        out.append(Op(kind, int(x[1]), int(x[2]), int(x[3]), int(y[-1]), k, s))
    return out
