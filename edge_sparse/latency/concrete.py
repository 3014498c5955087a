"""torch.fx tracing with concrete shapes: the graph of a forward that branches on its input's shape.

In:  an `nn.Module` and one example input.
Out: an fx `GraphModule` of the path the example takes, with module calls kept as `call_module` nodes (what
     `extract_ops` reads), shapes and other Python values computed on the example baked in as constants.
Run: `concrete_trace(model, example)`; `edge_sparse.latency.ops._capture` falls back to it when plain
     `symbolic_trace` cannot trace a forward (`if new_h != H:` in timm's MobileViT block, `v.device.type` in
     EfficientViT's attention).

Every proxy carries the value its node computes on the example (batch 1), so `x.shape`, `x.size(1)`, `x.dim()`,
`x.dtype`, `x.device`, `len(x)` and `if <tensor expr>:` read concrete values, as `torch.export` specialises static
shapes; the graph is the one path the example takes, which is all the latency model prices: one input size. A
branch on data values is specialised the same way (the path the example takes), so this is a fallback, not the
first choice. torch.fx's own `experimental.meta_tracer` does the same with meta tensors, where `x.device` is
'meta' and code that branches on the device goes another way than on the device it will run on.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn


class _ValueProxy(fx.Proxy):
    """A proxy that also holds its node's value on the example (absent when computing it failed)."""

    def _value(self):
        return self.__dict__.get("value", _MISSING)

    def size(self, dim=None):
        v = self._value()
        if isinstance(v, torch.Tensor):
            return v.size() if dim is None else v.size(dim)
        return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})

    def dim(self):
        v = self._value()
        return v.dim() if isinstance(v, torch.Tensor) else self.tracer.create_proxy("call_method", "dim", (self,), {})

    def __len__(self):
        v = self._value()
        if v is _MISSING:
            raise RuntimeError("len() of a traced value whose example value is unknown")
        return len(v)

    def __getattr__(self, k: str) -> Any:
        v = self.__dict__.get("value", _MISSING)
        if k in ("shape", "dtype", "device", "ndim", "is_cuda") and isinstance(v, torch.Tensor):
            return getattr(v, k)
        return super().__getattr__(k)


_MISSING = object()


class ConcreteTracer(fx.Tracer):
    def __init__(self, example: torch.Tensor):
        super().__init__()
        self.example = example
        self._computing = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        rv = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if not isinstance(rv, _ValueProxy):
            return rv
        value = lambda a: a.__dict__.get("value", _MISSING) if isinstance(a, _ValueProxy) else a  # noqa: E731
        vargs = fx.node.map_aggregate(args, value)
        vkwargs = fx.node.map_aggregate(kwargs, value)
        if any(a is _MISSING for a in _flat((vargs, vkwargs))):
            return rv
        self._computing = True
        try:
            with torch.no_grad():
                if kind == "placeholder":
                    out = self.example
                elif kind == "get_attr":
                    out = self.root
                    for atom in str(target).split("."):
                        out = getattr(out, atom)
                elif kind == "call_function":
                    out = target(*vargs, **vkwargs)
                elif kind == "call_method":
                    out = getattr(vargs[0], target)(*vargs[1:], **vkwargs)
                elif kind == "call_module":
                    out = self.root.get_submodule(target)(*vargs, **vkwargs)
                else:
                    return rv
            rv.__dict__["value"] = out
        except Exception:  # noqa: BLE001 - a value we cannot compute stays symbolic; ShapeProp reports a real failure
            pass
        finally:
            self._computing = False
        return rv

    # while a leaf module's value is computed on the example, its calls and parameters are plain, not traced
    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        v = obj.__dict__.get("value", _MISSING)
        if v is _MISSING:
            return super().to_bool(obj)
        return bool(v)

    def iter(self, obj: fx.Proxy):
        v = obj.__dict__.get("value", _MISSING)
        if v is _MISSING:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(v))])


def _flat(x):
    if isinstance(x, (tuple, list)):
        for a in x:
            yield from _flat(a)
    elif isinstance(x, dict):
        for a in x.values():
            yield from _flat(a)
    else:
        yield x


def concrete_trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    tracer = ConcreteTracer(example[:1])
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
