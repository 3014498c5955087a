"""The int8 TFLite ops a PyTorch model becomes, read off the model without exporting it.

In:  an `nn.Module` and an example input (NCHW), or a `.tflite` file.
Out: `Op`s in execution order, as XNNPACK runs the int8 graph our exporter (onnx2tf) produces:
     CONV_2D / DEPTHWISE_CONV_2D (grouped convs too) with BatchNorm folded and ReLU/ReLU6 fused, an explicit
     PAD before a strided padded conv or a padded pool (onnx2tf keeps PyTorch's symmetric padding that way),
     ADD (with a fused ReLU when one follows), MEAN for global average pooling, MAX/AVERAGE_POOL_2D,
     FULLY_CONNECTED; and the ops of mobile classifiers: HARD_SWISH, LOGISTIC (sigmoid; SiLU is LOGISTIC + MUL),
     GELU, MUL (same shape) and the squeeze-and-excitation gate's broadcast MUL, RELU_0_TO_1 (a hard-sigmoid
     whose affine part folds into the conv before it), CONCATENATION, SPLIT (chunk) and a channel shuffle
     (the exporter writes it as a GATHER of the channels: edge_sparse/export/rewrite.py). Nodes that compute no tensor (shape reads, `==`, asserts) cost nothing.
Run: `extract_ops(model, example)`; `tflite_ops(path)` reads the same list from an exported model,
     which the tests use to check the mapping on every registered architecture.

Why not export every candidate: onnx2tf takes ~8 s per model, and the search prices thousands of
width choices; tracing takes milliseconds. Channel pruning changes widths, never the op graph.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_sparse.errors import EdgeSparseError

KINDS = ("conv", "dwconv", "pad", "add", "mean", "fc", "maxpool", "avgpool", "relu",
         "hardswish", "sigmoid", "gelu", "mul", "mulc", "concat", "split", "slice", "shuffle", "layernorm",
         "transpose", "pwpair")  # pwpair: two 1x1 convs, the context HARD_SWISH and GELU are probed in (probes.baseline); no model's op
ELEMENTWISE = ("relu", "hardswish", "sigmoid", "gelu", "mul", "mulc")  # one input width, output the same shape
TFLITE_KIND = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "PAD": "pad", "ADD": "add", "MEAN": "mean",
               "FULLY_CONNECTED": "fc", "MAX_POOL_2D": "maxpool", "AVERAGE_POOL_2D": "avgpool", "RELU": "relu",
               "RELU6": "relu", "SUB": "add", "RELU_0_TO_1": "relu", "RELU_N1_TO_1": "relu", "HARD_SWISH": "hardswish",
               "LOGISTIC": "sigmoid", "GELU": "gelu", "MUL": "mul", "CONCATENATION": "concat", "SPLIT": "split",
               "SPLIT_V": "split", "STRIDED_SLICE": "slice", "SLICE": "slice", "GATHER": "shuffle",
               # a 4-d layout change onnx2tf writes around some ops (FastViT's GELUs after a sum of conv branches); no
               # torch op maps to it, so a build's prediction leaves it out (docs/known-gaps.md), read back it is priced
               "TRANSPOSE": "transpose"}
# what onnx2tf writes a LayerNorm over the channels as (after a MEAN over them): read back as the one "layernorm" op
_LAYER_NORM_OPS = {"MEAN", "SQUARED_DIFFERENCE", "ADD", "RSQRT", "MUL", "SUB"}
# ops of a .tflite that compute nothing or only move a tensor's shape: skipped when reading one back
TFLITE_FREE = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DELEGATE"}


@dataclass(frozen=True)
class Op:
    """One int8 op: input H×W×C, output channels, kernel, stride, and its fused activation."""

    kind: str  # one of KINDS
    h: int  # input height (for "fc": 1, or the feature map's for a Linear on channels-last pixels)
    w: int  # input width
    cin: int  # input channels (features for "fc")
    cout: int  # output channels (== cin for pad/add/mean/pool/relu/dwconv)
    k: int = 1  # kernel size (square); pooling window for pools
    stride: int = 1
    act: str = "none"  # fused activation: none | relu | relu6; "silu" marks the MUL of x * sigmoid(x)
    name: str = ""  # the module (or node) it comes from; not part of the key
    groups: int = 1  # grouped convs (1 < groups < channels); pruning keeps the group count, narrows each group
    same: bool = False  # a strided conv/pool padded SAME by the runtime itself (no PAD op before it)
    # a concat's tensors in: each costs a copy loop of its own (DenseNet's 25-tensor concat at 6x6x448 took 4.2 us
    # on the 2-core Xeon, two halves of the same tensor 0.8 us); the two-input concat's key stays as it was
    inputs: int = 2

    @property
    def _ks(self) -> str:
        return (f"k{self.k}s{self.stride}" + (f"g{self.groups}" if self.groups > 1 else "") + ("S" if self.same else "")
                + (f"n{self.inputs}" if self.kind == "concat" and self.inputs != 2 else ""))

    @property
    def key(self) -> str:
        """The shape signature a latency table is keyed by (widths included, name excluded)."""
        return f"{self.kind}:{self.h}x{self.w}:{self.cin}>{self.cout}:{self._ks}:{self.act}"

    @property
    def family(self) -> str:
        """The key without channel counts: ops of one family differ only in widths."""
        return f"{self.kind}:{self.h}x{self.w}:{self._ks}:{self.act}"

    @property
    def macs(self) -> int:
        if self.kind == "conv":
            return self.out_h * self.out_w * self.cout * (self.cin // self.groups) * self.k * self.k
        if self.kind == "dwconv":
            return self.out_h * self.out_w * self.cout * self.k * self.k
        if self.kind == "fc":
            return self.h * self.w * self.cin * self.cout
        return 0

    @property
    def weight_bytes(self) -> int:
        """Bytes of int8 weights and int32 biases the op reads per invoke (0 for ops without weights)."""
        if self.kind == "conv":
            return self.cout * (self.cin // self.groups) * self.k * self.k + 4 * self.cout
        if self.kind == "dwconv":
            return self.cout * self.k * self.k + 4 * self.cout
        if self.kind == "fc":
            return self.cin * self.cout + 4 * self.cout
        return 0

    @property
    def out_h(self) -> int:
        if self.kind == "pad":
            return self.h + 2 * ((self.k - 1) // 2)
        if self.kind == "mean":
            return 1
        if self.kind == "fc":
            return self.h
        return (self.h - self.k) // self.stride + 1 if self._valid else -(-self.h // self.stride)

    @property
    def out_w(self) -> int:
        if self.kind == "pad":
            return self.w + 2 * ((self.k - 1) // 2)
        if self.kind == "mean":
            return 1
        if self.kind == "fc":
            return self.w
        return (self.w - self.k) // self.stride + 1 if self._valid else -(-self.w // self.stride)

    @property
    def _valid(self) -> bool:
        # a strided padded conv follows its own PAD op, so it runs VALID; everything else keeps SAME shape
        return self.stride > 1 and not self.same and self.kind in ("conv", "dwconv", "maxpool", "avgpool")

    def cls(self) -> str:
        """Coarse op class, for per-class device factors: conv1x1 | conv3x3 | convkxk | gconv | dwconv | fc | fcmap (a
        Linear per pixel) | add | pool | mean | pad | relu, or the kind itself for the mobile ops (hardswish, ...)."""
        if self.kind == "conv":
            if self.groups > 1:
                return "gconv"
            return "conv1x1" if self.k == 1 else ("conv3x3" if self.k == 3 else "convkxk")
        if self.kind in ("maxpool", "avgpool"):
            return "pool"
        if self.kind == "fc" and self.h * self.w > 1:
            return "fcmap"
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
_PASSTHROUGH_FUNCS = {torch.flatten, F.dropout, F.batch_norm, operator.getitem, torch.reshape}
_IDENTITY_IN_EVAL = {"stochastic_depth", "drop_path", "drop_block_2d", "drop_block_fast_2d"}  # torchvision / timm
_PASSTHROUGH_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "size", "float", "clone"}
# activations that run as an op of their own (not fused into the conv before them)
_ACT_MODULES = ((nn.Hardswish, "hardswish"), (nn.Sigmoid, "sigmoid"), (nn.GELU, "gelu"), (nn.SiLU, "silu"),
                (nn.Hardsigmoid, "hardsigmoid"))
_ACT_FUNCS = {F.hardswish: "hardswish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu",
              F.silu: "silu", F.hardsigmoid: "hardsigmoid"}
_ACT_METHODS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_MUL = {operator.mul, torch.mul, operator.imul}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SPLIT_METHODS = {"chunk", "split", "tensor_split"}
_SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split}
_TRANSPOSE_METHODS = {"transpose", "permute"}
_TRANSPOSE_FUNCS = {torch.transpose, torch.permute}
PRICED = ("convs (grouped and depthwise too), linear, pooling, ReLU/ReLU6/hard-swish/hard-sigmoid/sigmoid/SiLU/GELU, "
          "BatchNorm (folded), additions, multiplications (SE gates), concatenation, chunk/split and channel shuffles, "
          "channels-last blocks (permute, LayerNorm over the channels, Linear per pixel)")


def _capture(model: nn.Module, example: torch.Tensor):
    """The model's fx graph with every node's output shape, for one image (batch 1).

    Shape checks written in Python (`assert x.shape[1] == C`, timm's `_assert`) trace into nodes that compute no
    tensor; `extract_ops` skips them. A forward that branches on a traced value cannot be captured by fx: that is
    one line naming the model and the reason.
    """
    from torch.fx import symbolic_trace

    from edge_sparse.latency.concrete import concrete_trace

    try:
        gm = symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same user-facing problem
        try:  # a branch on the input's shape: trace again with the example's concrete shapes
            gm = concrete_trace(model, example)
        except Exception:  # noqa: BLE001 - report plain fx's failure: it names the line that stopped it
            gm = None
        if gm is not None:
            return _propagate(model, gm, example)
        first = str(e).splitlines()[0] if str(e) else ""
        raise EdgeSparseError(
            f"cannot trace {type(model).__name__} with torch.fx to price its layers{_where(model, e)} "
            f"({type(e).__name__}: {first[:160]}); the latency model needs a forward without Python control flow on "
            f"traced values") from None
    return _propagate(model, gm, example)


def _propagate(model: nn.Module, gm, example: torch.Tensor):
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example[:1])
    except Exception as e:  # noqa: BLE001 - the traced graph does not run: a layer's shapes do not fit
        cause = e.__cause__ or e  # ShapeProp wraps the layer's own error; name that one
        first = str(cause).splitlines()[0] if str(cause) else ""
        node = str(e).split("node=%", 1)[1].split(" ", 1)[0] if "node=%" in str(e) else "?"
        raise EdgeSparseError(
            f"{type(model).__name__} does not run on a {tuple(example.shape[1:])} input (fx node {node}: "
            f"{type(cause).__name__}: {first[:160]})") from None
    return gm


def _where(model: nn.Module, e: BaseException) -> str:
    """' in module NAME (Class), file:line `code`': the innermost module forward the failure happened in."""
    import linecache

    names = {m: n for n, m in model.named_modules()}
    tb, hit = e.__traceback__, None
    while tb is not None:
        f = tb.tb_frame
        me = f.f_locals.get("self")
        if isinstance(me, nn.Module) and me in names:
            hit = (names[me] or "(the model)", type(me).__name__, f.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    if hit is None:
        return ""
    name, cls, path, line = hit
    code = linecache.getline(path, line).strip()
    return f" in module {name} ({cls}), {Path(path).name}:{line} `{code[:80]}`"


def _shape(n) -> tuple:
    meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _in(node) -> str:
    """' in module NAME (Class)': the innermost module a traced node was called from (fx's nn_module_stack)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    name, cls = list(stack.values())[-1]
    return f" in module {name} ({getattr(cls, '__name__', cls)})"


def _arg(node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _same_is_symmetric(h: int, k: int, s: int, p: int) -> bool:
    """Whether TFLite's SAME padding of a k/s op on side h is PyTorch's symmetric padding p: onnx2tf then writes
    the op SAME (no PAD op); otherwise (e.g. an even side, where SAME pads one more at the end) an explicit PAD."""
    total = max((-(-h // s) - 1) * s + k - h, 0)
    return total == 2 * p and (h + 2 * p - k) // s + 1 == -(-h // s)


def _pool_op(kind: str, name: str, ins: tuple, outs: tuple, k: int, s: int, pad: int) -> list[Op]:
    """A pool as onnx2tf runs it: an explicit PAD when padded, then the pool on the padded input (VALID when
    strided): the padded side, (out - 1) * stride + kernel, is what gives PyTorch's output side, ceil_mode included."""
    _, c, h, w = ins
    ops = [Op("pad", h, w, c, c, k=2 * pad + 1, name=f"{name}.pad")] if pad else []
    if s == 1:
        return ops + [Op(kind, h, w, c, c, k, 1, name=name)]
    if not pad and (outs[2], outs[3]) == (-(-h // s), -(-w // s)) and (outs[2], outs[3]) != ((h - k) // s + 1,
                                                                                           (w - k) // s + 1):
        return [Op(kind, h, w, c, c, k, s, name=name, same=True)]  # ceil_mode that SAME reproduces (measured)
    ph, pw = (outs[2] - 1) * s + k, (outs[3] - 1) * s + k
    if not pad and (ph > h or pw > w):  # ceil_mode SAME does not reproduce: padded at the end
        ops.append(Op("pad", h, w, c, c, k=1, name=f"{name}.pad"))
    return ops + [Op(kind, max(h + 2 * pad, ph), max(w + 2 * pad, pw), c, c, k, s, name=name)]


def _folds(src, producer: dict, ops: list) -> bool:
    """Whether a BatchNorm reading fx node `src` folds into the conv or linear layer that produced it (the ONNX
    export folds Conv -> BatchNormalization when nothing else reads the conv's output; an activation between them,
    another reader, or no such layer leaves the BatchNorm)."""
    i = producer.get(src)
    return (i is not None and ops[i].kind in ("conv", "dwconv", "fc") and ops[i].act == "none"
            and len(getattr(src, "users", ())) == 1)  # the export folds a BatchNorm only into a conv it alone reads


def _silu_mul(sig: Op) -> Op:
    """The MUL of x * sigmoid(x), shaped like its LOGISTIC `sig`."""
    return Op("mul", sig.h, sig.w, sig.cin, sig.cin, act="silu", name=sig.name)


def _sigmoid_arg(node):
    """The operand of a MUL node that is a sigmoid of the other operand (x * sigmoid(x), written out), or None."""
    a, b = node.args[:2]
    for s, x in ((b, a), (a, b)):
        arg = (s.args[0] if s.args else s.kwargs.get("input")) if hasattr(s, "args") else None
        if arg is not x:
            continue
        if s.op == "call_function" and s.target in (torch.sigmoid, F.sigmoid):
            return s
        if s.op == "call_method" and s.target in _ACT_METHODS:
            return s
        if s.op == "call_module":
            m = s.graph.owning_module.get_submodule(s.target) if s.graph.owning_module is not None else None
            if isinstance(m, nn.Sigmoid):
                return s
    return None


def extract_ops(model: nn.Module, example: torch.Tensor, scopes: Optional[list] = None) -> list[Op]:
    """The int8 TFLite ops `model` exports to, for one NCHW image shaped like `example`. `scopes`, when given, gets
    each op's module: a module op's own name, else the module whose forward computed it ("" for the model's own)."""
    model = model.eval()
    gm = _capture(model, example)
    ops: list[Op] = []
    producer: dict = {}  # fx node -> index in `ops` of the op that produced its value (for fusing)

    def emit(node, op: Op) -> None:
        producer[node] = len(ops)
        ops.append(op)
        if scopes is not None:
            stack = node.meta.get("nn_module_stack") or {}
            scopes.append(node.target if node.op == "call_module" else
                          (list(stack.values())[-1][0] if stack else ""))

    def elementwise(node, kind: str, like: tuple) -> None:
        if len(like) == 4:
            emit(node, Op(kind, like[2], like[3], like[1], like[1], name=node.name))
        elif len(like) == 2:
            emit(node, Op(kind, 1, 1, like[1], like[1], name=node.name))
        elif len(like) == 3:  # (N, tokens, C): channels-last blocks
            emit(node, Op(kind, 1, like[1], like[2], like[2], name=node.name))

    def activation(node, act: str, ins: tuple) -> None:
        if act == "silu":  # x * sigmoid(x): LOGISTIC, then a MUL priced as a SiLU's (probes.baseline)
            n = len(ops)
            elementwise(node, "sigmoid", ins)
            if len(ops) > n:  # (a shape `elementwise` prices, so the LOGISTIC was emitted)
                emit(node, _silu_mul(ops[-1]))
        elif act == "hardsigmoid":
            # relu6(x + 3) / 6: the affine part folds into a conv or FC before it, the clamp is RELU_0_TO_1
            elementwise(node, "relu", ins)
        else:
            elementwise(node, act, ins)

    def conv(node, name: str, ins: tuple, cout: int, k: tuple, s: tuple, pad, dil, groups: int) -> None:
        _, c, h, w = ins
        if k[0] != k[1] or s[0] != s[1] or tuple(dil) != (1, 1):
            raise EdgeSparseError(f"layer {name}: only square, undilated kernels are priced "
                                  f"(kernel {tuple(k)}, stride {tuple(s)}, dilation {tuple(dil)})")
        if isinstance(pad, str):
            p = (k[0] - 1) // 2 if pad == "same" else 0
        else:
            p = pad[0] if isinstance(pad, (tuple, list)) else int(pad)
        dw = groups > 1 and groups == c and cout == c
        same = s[0] > 1 and p > 0 and _same_is_symmetric(h, k[0], s[0], p) and _same_is_symmetric(w, k[0], s[0], p)
        if s[0] > 1 and p > 0 and not same:
            emit(node, Op("pad", h, w, c, c, k=2 * p + 1, name=f"{name}.pad"))
            h, w = h + 2 * p, w + 2 * p
        emit(node, Op("dwconv" if dw else "conv", h, w, c, cout, k[0], s[0], name=name,
                      groups=1 if dw else groups, same=same))

    # ConvNeXt-style blocks permute a feature map to channels-last (N, H, W, C) for LayerNorm and Linear layers and
    # back; onnx2tf's layout is channels-last already, so both permutes vanish from the .tflite (measured on
    # TinyConvNeXt). Nodes holding such a tensor are tracked, and their shapes read as NCHW for the ops below.
    nhwc: set = set()
    nchw = lambda sh: (sh[0], sh[3], sh[1], sh[2])  # noqa: E731
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        ins = _shape(src) if src is not None else ()
        out = _shape(node)
        dims = _permutation(node)
        if dims is not None and len(ins) == 4:
            if (dims == (0, 2, 3, 1) and src not in nhwc) or (dims == (0, 3, 1, 2) and src in nhwc):
                if dims == (0, 2, 3, 1):
                    nhwc.add(node)
                if src in producer:
                    producer[node] = producer[src]
                continue
        if not out and not (node.op == "call_method" and node.target in _SPLIT_METHODS) and \
                not (node.op == "call_function" and node.target in _SPLIT_FUNCS):
            continue  # a shape read, a comparison, an assert: no tensor, no op (on a channels-last tensor too)
        if any(a in nhwc for a in node.all_input_nodes):  # (inside a list or a keyword too)
            if not _channels_last_ok(node):
                what = getattr(node.target, "__name__", node.target)
                raise EdgeSparseError(f"node {node.name}{_in(node)} ({node.op} {what}): no latency class for it on a "
                                      f"channels-last (permuted) feature map: LayerNorm, Linear, activations, add "
                                      f"and multiply are priced there")
            ins = nchw(ins) if src in nhwc else ins
            if len(out) == 4:
                nhwc.add(node)
                out = nchw(out)
        act = _act_of(node)
        if act is not None:
            i = producer.get(src)
            if i is not None and ops[i].act == "none" and ops[i].kind in ("conv", "dwconv", "add", "fc") \
                    and len(src.users) == 1:
                ops[i] = ops[i].replace(act=act)
                producer[node] = i
            else:
                elementwise(node, "relu", ins)
            continue
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.Conv2d):
                conv(node, node.target, ins, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, nn.Linear):
                emit(node, _linear(node.target, ins, src in nhwc, m.in_features, m.out_features))
            elif isinstance(m, nn.LayerNorm):
                emit(node, _layer_norm(node.target, ins, src in nhwc, m.normalized_shape))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                if tuple(out[2:]) != (1, 1):
                    raise EdgeSparseError(f"layer {node.target}: adaptive pooling to {out[2:]} is not priced "
                                          f"(only global average pooling, output 1x1)")
                _, c, h, w = ins
                emit(node, Op("mean", h, w, c, c, name=node.target))
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
                st = m.stride if isinstance(m.stride, int) else (m.stride[0] if m.stride else k)
                p = m.padding if isinstance(m.padding, int) else m.padding[0]
                for op in _pool_op("maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool", node.target, ins, out, k,
                                   st, p):
                    emit(node, op)
            elif any(isinstance(m, t) for t, _ in _ACT_MODULES):
                activation(node, next(a for t, a in _ACT_MODULES if isinstance(m, t)), ins)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not _folds(src, producer, ops):
                # a BatchNorm with no conv right before it (RepViT's bn(conv(x) + conv1(x) + x)) does not fold into
                # one: onnx2tf runs its per-channel affine as a MUL and an ADD on the whole tensor
                elementwise(node, "mul", ins)
                elementwise(node, "add", ins)
            elif isinstance(m, _PASSTHROUGH_MODULES):
                if src in producer:
                    producer[node] = producer[src]
            else:
                raise EdgeSparseError(f"layer {node.target}: no latency class for {type(m).__name__}; priced ops are "
                                      f"{PRICED}")
        elif node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd, operator.sub,
                                                             torch.sub, operator.isub):
            a, b = (_shape(x) for x in node.args[:2])
            if a and b:  # ADD / SUB (priced as ADD: the same int8 elementwise loop)
                elementwise(node, "add", out)
            elif src in producer:  # plus a Python number: folds into the quantization
                producer[node] = producer[src]
        elif node.op == "call_function" and node.target in (operator.truediv, torch.div):
            b = _shape(node.args[1]) if len(node.args) > 1 else ()
            if b:
                raise EdgeSparseError(f"node {node.name}{_in(node)}: division by a tensor is not priced")
            if src in producer:  # divided by a number: folds into the quantization scale
                producer[node] = producer[src]
        elif node.op == "call_function" and node.target in _MUL:
            a, b = (_shape(x) for x in node.args[:2])
            other = next((x for x in node.args[:2] if isinstance(x, torch.fx.Node) and x.op != "get_attr"), None)
            param = next((x for x in node.args[:2] if isinstance(x, torch.fx.Node) and x.op == "get_attr"), None)
            scaled = producer.get(other)
            if param is not None and scaled is not None and ops[scaled].kind in ("conv", "dwconv", "fc") \
                    and ops[scaled].act == "none" and _sole_reader(other, producer) \
                    and math.prod(_shape(param)) == ops[scaled].cout:
                # a layer scale (a per-channel parameter) times a conv's or Linear's output: onnx2tf folds it into
                # that layer's weights (ConvNeXt's, measured), no MUL is left
                producer[node] = scaled
            elif len(a) == 4 and len(b) == 4 and a != b:  # x * gate, the gate (N, C, 1, 1): the SE's broadcast MUL
                emit(node, Op("mulc", out[2], out[3], out[1], out[1], name=node.name))
            elif a and b:
                sig = producer.get(_sigmoid_arg(node))  # x * sigmoid(x) written out: a SiLU's MUL
                if sig is not None:
                    emit(node, _silu_mul(ops[sig]).replace(name=node.name))
                else:
                    elementwise(node, "mul", out)
            else:  # times a Python number: folds into the neighbouring op's quantization
                if src in producer:
                    producer[node] = producer[src]
        elif node.op == "call_function" and node.target in _CAT:
            dim = _arg(node, 1, "dim", 0)
            if len(out) != 4 or dim not in (1, -3):
                raise EdgeSparseError(f"node {node.name}{_in(node)}: concatenation along dim {dim} of a {len(out)}-d tensor is not "
                                      f"priced (only channel concatenation of feature maps)")
            parts = node.args[0] if node.args else node.kwargs.get("tensors")
            n = len(parts) if isinstance(parts, (list, tuple)) else 2  # onnx2tf writes one CONCATENATION of them all
            emit(node, Op("concat", out[2], out[3], out[1], out[1], name=node.name, inputs=n))
        elif (node.op == "call_method" and node.target in _SPLIT_METHODS) or \
                (node.op == "call_function" and node.target in _SPLIT_FUNCS):
            dim = _arg(node, 2, "dim", 0)
            if len(ins) != 4 or dim not in (1, -3):
                raise EdgeSparseError(f"node {node.name}{_in(node)}: {node.target} along dim {dim} is not priced (only channel "
                                      f"splits of feature maps)")
            # onnx2tf writes a channel chunk/split as one STRIDED_SLICE per piece (measured): a copy of the piece
            for piece in (node.users if node.users else [node]):
                c = _shape(piece)[1] if _shape(piece) else ins[1]
                emit(node, Op("slice", ins[2], ins[3], c, c, name=f"{node.name}.{piece.name}"))
        elif (node.op == "call_method" and node.target in _TRANSPOSE_METHODS) or \
                (node.op == "call_function" and node.target in _TRANSPOSE_FUNCS):
            if len(ins) != 5:
                raise EdgeSparseError(f"node {node.name}{_in(node)}: no latency class for it: {node.target} of a {len(ins)}-d "
                                      f"tensor (priced: a channel shuffle's 5-d transpose and the NCHW <-> NHWC permutes "
                                      f"around channels-last blocks; attention's token reshapes, matmul and softmax are not)")
            n, g, cg, h, w = ins
            emit(node, Op("shuffle", h, w, g * cg, g * cg, name=node.name, groups=g))
        elif node.op == "call_function" and node.target is F.conv2d:
            wshape = _shape(node.args[1])
            groups = _arg(node, 6, "groups", 1)
            k = tuple(wshape[2:])
            st = _arg(node, 3, "stride", 1)
            p = _arg(node, 4, "padding", 0)
            d = _arg(node, 5, "dilation", 1)
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            conv(node, node.name, ins, wshape[0], k, pair(st), p if isinstance(p, str) else pair(p), pair(d), groups)
        elif node.op == "call_function" and node.target in (F.linear,):
            wshape = _shape(node.args[1])
            emit(node, _linear(node.name, ins, src in nhwc, wshape[1], wshape[0]))
        elif node.op == "call_function" and node.target is F.layer_norm:
            emit(node, _layer_norm(node.name, ins, src in nhwc, _static(_arg(node, 1, "normalized_shape"))))
        elif node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d):
            k = _arg(node, 1, "kernel_size")
            st = _arg(node, 2, "stride") or k
            p = _arg(node, 3, "padding", 0)
            first = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731
            for op in _pool_op("maxpool" if node.target is F.max_pool2d else "avgpool", node.name, ins, out, first(k),
                               first(st), first(p)):
                emit(node, op)
        elif node.op == "call_function" and node.target in _ACT_FUNCS:
            activation(node, _ACT_FUNCS[node.target], ins)
        elif node.op == "call_method" and node.target in _ACT_METHODS:
            activation(node, _ACT_METHODS[node.target], ins)
        elif (node.op == "call_function" and node.target in (torch.mean, F.adaptive_avg_pool2d)) or \
                (node.op == "call_method" and node.target == "mean"):
            if len(ins) != 4 or tuple(out[2:]) not in ((1, 1), ()):
                raise EdgeSparseError(f"node {node.name}{_in(node)}: a mean over other axes than the spatial ones is not priced")
            _, c, h, w = ins
            emit(node, Op("mean", h, w, c, c, name=node.name))
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in _IDENTITY_IN_EVAL:
            if src in producer:  # stochastic depth / drop path: the identity at inference
                producer[node] = producer[src]
        elif (node.op == "call_function" and node.target in _PASSTHROUGH_FUNCS) or \
                (node.op == "call_method" and node.target in _PASSTHROUGH_METHODS) or \
                (node.op == "call_function" and node.target is getattr):
            if src in producer:
                producer[node] = producer[src]
        else:
            what = getattr(node.target, "__name__", node.target)
            raise EdgeSparseError(f"node {node.name}{_in(node)} ({node.op} {what}): no latency class for it; priced ops "
                                  f"are {PRICED}")
    return ops


def _static(v):
    """A traced argument's value where the trace knows it: `x.shape` and an index or slice of it (`F.layer_norm(x,
    x.shape[-1:])`) read off the tensor's recorded shape; anything else as given."""
    if not isinstance(v, torch.fx.Node):
        return v
    if v.op == "call_function" and v.target is getattr and v.args[1] == "shape" and _shape(v.args[0]):
        return torch.Size(_shape(v.args[0]))
    if v.op == "call_method" and v.target == "size" and len(v.args) == 1 and _shape(v.args[0]):
        return torch.Size(_shape(v.args[0]))
    if v.op == "call_function" and v.target is operator.getitem:
        base = _static(v.args[0])
        if isinstance(base, torch.Size) and isinstance(v.args[1], (int, slice)):
            got = base[v.args[1]]
            return got if isinstance(got, torch.Size) else int(got)
    return v


def _permutation(node) -> Optional[tuple]:
    """The dims of a permute (or of a two-dim transpose, as a full permutation) of a 4-d tensor; None otherwise."""
    if not ((node.op == "call_method" and node.target in _TRANSPOSE_METHODS) or
            (node.op == "call_function" and node.target in _TRANSPOSE_FUNCS)):
        return None
    args = [a for a in node.args[1:]]
    if "dims" in node.kwargs:
        args = [node.kwargs["dims"]]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if not all(isinstance(a, int) for a in args):
        return None
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "transpose" and len(args) == 2:
        p = [0, 1, 2, 3]
        a, b = (x % 4 for x in args)
        p[a], p[b] = p[b], p[a]
        return tuple(p)
    return tuple(a % 4 for a in args) if len(args) == 4 else None


def _sole_reader(node, producer: dict) -> bool:
    """Whether `node`'s value reaches its reader alone: every node from the op that made it (through permutes, views,
    dropout) has one user, so a scale on it can fold into that op's weights."""
    i = producer.get(node)
    while node is not None and producer.get(node) == i:
        if len(node.users) != 1:
            return False
        prev = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if prev is None or producer.get(prev) != i:
            return True
        node = prev
    return True


def _channels_last_ok(node) -> bool:
    """Whether `node` may read a channels-last feature map (the ops of a ConvNeXt block between its two permutes)."""
    if node.op == "call_module":
        m = node.graph.owning_module.get_submodule(node.target)
        return isinstance(m, (nn.LayerNorm, nn.Linear, nn.Dropout, nn.Identity)) or \
            any(isinstance(m, t) for t, _ in _ACT_MODULES) or _act_of(node) is not None
    if node.op == "call_function":
        return node.target in (F.layer_norm, F.linear, F.dropout, operator.add, torch.add, operator.iadd, *_MUL) or \
            node.target in _ACT_FUNCS or _act_of(node) is not None or \
            getattr(node.target, "__name__", "") in _IDENTITY_IN_EVAL or node.target in _TRANSPOSE_FUNCS
    return node.op == "call_method" and (node.target in _ACT_METHODS or node.target == "contiguous"
                                         or node.target in _TRANSPOSE_METHODS or _act_of(node) is not None)


def _linear(name: str, ins: tuple, channels_last: bool, cin: int, cout: int) -> Op:
    """A Linear: FULLY_CONNECTED on (N, features), or on every pixel of a channels-last feature map (ConvNeXt)."""
    if len(ins) == 2:
        return Op("fc", 1, 1, cin, cout, name=name)
    if len(ins) == 4 and channels_last:
        return Op("fc", ins[2], ins[3], cin, cout, name=name)
    raise EdgeSparseError(f"layer {name}: a Linear on a {len(ins)}-d input is not priced (only on (N, features) and on "
                          f"a channels-last feature map)")


def _layer_norm(name: str, ins: tuple, channels_last: bool, normalized_shape) -> Op:
    """A LayerNorm over the channels of a channels-last feature map (ConvNeXt's, timm's LayerNorm2d), which onnx2tf
    writes as ten int8 ops (MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, three MULs, SUB, ADD): one op here."""
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) else (normalized_shape,)
    if not (len(ins) == 4 and channels_last and len(shape) == 1 and shape[0] == ins[1]):
        raise EdgeSparseError(f"layer {name}: a LayerNorm over {shape} of a {len(ins)}-d "
                              f"{'channels-last ' if channels_last else ''}tensor is not priced (only over the channels "
                              f"of a channels-last feature map)")
    return Op("layernorm", ins[2], ins[3], ins[1], ins[1], name=name)


def conv2d_kind(filter_shape, cin: int) -> tuple[str, int]:
    """A TFLite CONV_2D's kind and groups from its (out, kh, kw, in / groups) filter and input channels. A conv in
    `cin` groups of one channel is a depthwise conv: onnx2tf writes one so after a residual add, and XNNPACK runs it
    with its dwconv kernel (convolution-nhwc.c). Shared by `tflite_ops` and the export lint."""
    out, per = int(filter_shape[0]), int(filter_shape[3])
    if per == 1 and out == cin > 1:
        return "dwconv", 1
    return "conv", max(1, cin // per)


def tflite_ops(path: Path | str) -> list[Op]:
    """The compute ops of an exported .tflite, in execution order, read from its flatbuffer (kernel, stride and
    groups from the ops' options and weights). Ops that only move shapes (RESHAPE, QUANTIZE, ...) are skipped; a
    compute op with no kind here is an error naming it, never skipped."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    sub = model.subgraphs[0]
    shape = lambda i: tuple(int(v) for v in sub.tensors[i].shape)  # noqa: E731
    out = []
    origin: dict[int, int] = {}  # a tensor a shape-only op (QUANTIZE, RESHAPE, ...) made -> the tensor it came from
    sigmoid_of: dict[int, int] = {}  # a LOGISTIC's output -> its input (both through `origin`)
    src = lambda i: origin.get(i, i)  # noqa: E731
    const = lambda i: model.buffers[sub.tensors[i].buffer].data is not None  # noqa: E731 (weights, constants)
    norm: set[int] = set()  # tensors inside a LayerNorm's ops: its input, and what its ten ops compute from it
    norm_in = None  # that LayerNorm's input
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        if name in TFLITE_FREE:
            if len(op.inputs) and len(op.outputs) == 1:
                origin[op.outputs[0]] = src(op.inputs[0])
            continue
        live = [src(i) for i in op.inputs if i >= 0 and not const(i)]
        if name in _LAYER_NORM_OPS and live and all(i in norm for i in live) and \
                (name != "MEAN" or shape(op.outputs[0])[-1] == 1) and \
                (name != "ADD" or norm_in not in live):  # (a spatial MEAN after it is the pooling; none of its
            # ADDs reads its input x, which MEAN, SQUARED_DIFFERENCE and MUL(x, gamma * rsqrt) do: x + LN(x) is an add)
            norm.update(src(o) for o in op.outputs)  # one of a LayerNorm's ops (`_layer_norm`): priced with it
            continue
        if any(i in norm for i in live):
            norm = set()  # its output read by the next op: that LayerNorm is complete
        if name == "MEAN" and len(shape(op.inputs[0])) == 4 and shape(op.inputs[0])[-1] > 1 \
                and shape(op.outputs[0])[-1] == 1:  # a mean over the channels: a LayerNorm starts
            x = shape(op.inputs[0])
            out.append(Op("layernorm", int(x[1]), int(x[2]), int(x[3]), int(x[3])))
            norm, norm_in = {src(op.inputs[0]), *(src(o) for o in op.outputs)}, src(op.inputs[0])
            continue
        if name == "LOGISTIC":
            sigmoid_of[op.outputs[0]] = src(op.inputs[0])
        kind = TFLITE_KIND.get(name)
        if kind is None:
            raise EdgeSparseError(f"{path}: op {name} has no latency kind (known: {', '.join(sorted(TFLITE_KIND))})")
        x, y = shape(op.inputs[0]), shape(op.outputs[0])
        opts = op.builtinOptions
        if kind == "fc":  # on (N, features), or on every pixel of a feature map (a channels-last Linear)
            hw = (int(x[1]), int(x[2])) if len(x) == 4 and x[1:3] != (1, 1) else (1, 1)
            out.append(Op("fc", *hw, int(x[-1]), int(y[-1])))
            continue
        if len(x) == 2:  # (N, C) elementwise: the classifier head's activations
            x, y = (x[0], 1, 1, x[1]), (y[0], 1, 1, y[1])
        k, s, groups, same, act = 1, 1, 1, False, "none"
        if kind in ("conv", "dwconv", "maxpool", "avgpool"):
            same = int(opts.strideH) > 1 and int(opts.padding) == schema.Padding.SAME
        if kind in ("conv", "dwconv"):
            wshape = shape(op.inputs[1])
            k, s = int(wshape[1]), int(opts.strideH)
            if kind == "conv":
                kind, groups = conv2d_kind(wshape, x[3])
            elif int(y[-1]) != int(x[3]):  # a depth multiplier: priced as the grouped conv torch has (one input per group)
                kind, groups = "conv", int(x[3])
        elif kind == "pad":
            k = int(y[1] - x[1]) + 1
        elif kind in ("maxpool", "avgpool"):
            k, s = int(opts.filterHeight), int(opts.strideH)
        elif kind == "mul" and len(op.inputs) == 2:
            other = shape(op.inputs[1])
            if len(other) == 4 and other[1:3] == (1, 1) and x[1:3] != (1, 1):
                kind = "mulc"
            elif len(x) == 4 and x[1:3] == (1, 1) and len(other) == 4 and other[1:3] != (1, 1):
                kind, x = "mulc", other
            elif any(sigmoid_of.get(src(a)) == src(b) for a, b in (tuple(op.inputs), tuple(op.inputs)[::-1])):
                act = "silu"  # x * LOGISTIC(x)
        elif kind == "slice":  # one piece of a channel chunk/split: priced by the piece it copies
            out.append(Op("slice", int(x[1]), int(x[2]), int(y[-1]), int(y[-1])))
            continue
        elif kind in ("concat", "split", "shuffle"):
            if kind == "shuffle":  # a GATHER of the channels; its group count is read off the indices
                groups = _gather_groups(model, sub, op)
            c = int(y[-1]) if kind == "concat" else int(x[-1])
            out.append(Op(kind, int(x[1]), int(x[2]), c, c, groups=groups,
                          inputs=len([i for i in op.inputs if i >= 0]) if kind == "concat" else 2))
            continue
        if kind in ELEMENTWISE and len(x) == 4 and sorted(x[1:])[:2] == [1, 1]:
            x = (x[0], 1, 1, max(x[1:]))  # a (N, C) activation the exporter ran as (N, C, 1, 1) or (N, 1, 1, C)
        if kind == "transpose":  # priced by the tensor it moves, as (H, W, C) of its NHWC input
            out.append(Op("transpose", int(x[1]), int(x[2]), int(x[3]), int(x[3])) if len(x) == 4 else
                       Op("transpose", 1, 1, int(math.prod(x[1:])), int(math.prod(x[1:]))))
            continue
        if kind in ELEMENTWISE or kind in ("add", "mean", "maxpool", "avgpool", "pad"):
            out.append(Op(kind, int(x[1]), int(x[2]), int(x[3]), int(x[3]), k, s, act=act, same=same))
        else:
            out.append(Op(kind, int(x[1]), int(x[2]), int(x[3]), int(y[-1]), k, s, groups=groups, same=same))
    return out


def _gather_groups(model, sub, op) -> int:
    """G of a channel shuffle written as a GATHER: its indices are [0, C/G, 2C/G, ..., 1, ...], so G = C / idx[1]."""
    import numpy as np

    t = sub.tensors[op.inputs[1]]
    raw = model.buffers[t.buffer].data
    n = int(np.prod(t.shape))
    if raw is None or n < 2:
        return 1
    idx = np.frombuffer(bytes(bytearray(raw)), dtype=np.int64 if len(raw) == 8 * n else np.int32)
    c = int(sub.tensors[op.inputs[0]].shape[-1])
    return c // int(idx[1]) if idx[1] > 0 else 1
