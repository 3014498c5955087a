"""Structured pruning on Torch-Pruning's dependency graph, and the physical shrink check.

In:  a trained dense `nn.Module`, an example input, a sparsity and an importance criterion.
Out: `PruneResult`: a plain, physically smaller `nn.Module` (channels really removed), its params and
     MACs before/after, a JSON record that replays the pruning on the dense model, and the measured
     max |masked - shrunk| of the outputs (the shrink check).
Run: `edge-sparse prune --checkpoint runs/x/dense.pt --sparsity 0.5 --out runs/x/pruned`

    import edge_sparse as es
    res = es.prune(model, torch.randn(1, 3, 32, 32), sparsity=0.5, criterion="bn_scale", round_to=8)

Coupled channels (a residual add ties the outputs of every conv feeding it) are found by
Torch-Pruning's `DependencyGraph`; we never trace the graph ourselves.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
import torch.nn as nn

from edge_sparse.errors import EdgeSparseError
from edge_sparse.registry import Registry

Criterion = Literal["bn_scale", "l1", "l2", "taylor"]
CRITERIA: Registry = Registry("pruning criterion")
RECORD_FORMAT = "edge_sparse.prune/1"
SHRINK_TOLERANCE = 1e-4


def renormalized_batchnorms(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The BatchNorms whose scale says nothing of what their channels contribute: every use of their output reaches,
    through one-input element-wise ops only (activations), a conv that reads one channel per output channel
    (depthwise) and is batch-normalised again. That BatchNorm undoes any per-channel scale, so gamma there only sets
    each channel's range: MobileNet's stem and expand layers. The L1 term must leave them alone (on MobileNetV3 it
    let the stem keep one channel at gamma 18.9 beside fifteen near 0.03 whose signal the depthwise BatchNorm
    re-amplified: a 250x spread of ranges that per-tensor int8 cannot hold, 66 % int8 agreement), and the bn_scale
    ranking reads the group's other BatchNorms. Empty when Torch-Pruning cannot trace the model (nothing exempt)."""
    import torch_pruning as tp
    from torch_pruning import ops

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _tolerate_torch_pruning()
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    except Exception:
        return []

    def renormalized(node, depth: int = 0) -> bool:
        if not node.outputs or depth > 8:
            return False
        for out in node.outputs:
            m = out.module
            if out.type == ops.OPTYPE.ELEMENTWISE and len(out.inputs) == 1:
                if not renormalized(out, depth + 1):
                    return False
            elif not (isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and out.outputs
                      and all(batch_norm(o) for o in out.outputs)):
                return False
        return True

    def batch_norm(node) -> bool:  # timm's BatchNormAct2d: the module's node is its activation, the norm an op before
        return isinstance(node.module, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(node.grad_fn).__name__

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            and m in dg.module2node and renormalized(dg.module2node[m])]


def bn_scale_importance(skip=(), normalizer: Optional[str] = "mean", fallback: bool = True):
    """|gamma| of each channel's BatchNorm (network slimming), over the group's BatchNorms but those in `skip`
    (`renormalized_batchnorms`); a group with no such BatchNorm (SqueezeNet's fire modules, convs with bias and no
    norm) is ranked by its weights' L2 norm instead, so such a model still prunes (`fallback=False`: None for it)."""
    import torch_pruning as tp
    from torch_pruning.dependency.group import Group

    skip = frozenset(skip)

    class BNScaleOrMagnitude(tp.importance.BNScaleImportance):
        def __init__(self):
            super().__init__(normalizer=normalizer)
            self._magnitude = tp.importance.GroupMagnitudeImportance(p=2, normalizer=normalizer)

        def __call__(self, group):
            scored = group
            if skip:
                scored = Group()
                scored._DG = group._DG
                scored._group = [item for item in group._group if item.dep.layer not in skip]
            self._root_channels = len(group[0].idxs)
            imp = super().__call__(scored) if len(scored._group) else None
            return self._magnitude(group) if imp is None and fallback else imp

        def _reduce(self, group_imp, group_idxs):
            # Torch-Pruning sizes the sum by the first scored layer, which a BatchNorm narrower than the group's root
            # overflows (a GhostNet module: 2 root channels per BN channel). Sized by the root's channels here, and
            # each narrow BatchNorm covering part of them, the mean is per channel over the layers that score it.
            if group_imp and len(group_imp[0]) < self._root_channels and self.group_reduction in ("mean", "sum"):
                total, count = torch.zeros(self._root_channels), torch.zeros(self._root_channels)
                for imp, root_idxs in zip(group_imp, group_idxs):
                    if any(r is None for r in root_idxs):
                        continue
                    idx = torch.tensor(root_idxs)
                    total.scatter_add_(0, idx, imp.detach().float().cpu())
                    count.scatter_add_(0, idx, torch.ones(len(root_idxs)))
                return total / count.clamp(min=1) if self.group_reduction == "mean" else total
            return super()._reduce(group_imp, group_idxs)

    return BNScaleOrMagnitude()


@CRITERIA.register("bn_scale")
def _bn_scale(skip=()):
    return bn_scale_importance(skip)


_UNBUILDABLE: list = []  # root modules whose group Torch-Pruning could not build in the current prune() call


def _tolerate_torch_pruning() -> None:
    """Make two of Torch-Pruning's failures on shuffle networks local instead of fatal (installed once per process;
    nothing changes for graphs it handles):

    - mapping channel indices through a reshape, it divides by a width its shape inference finds to be 0
      (torchvision's ShuffleNetV2 shuffle, "residual connection to model inputs"): that reshape is left unmapped;
    - building one group, its concat index mapping runs past a list (the chunk + concat around a shuffle): that
      group is skipped, its root recorded in `_UNBUILDABLE`, and `prune` keeps its layers whole and lists them.
    The layers on a channel shuffle's sides are kept whole anyway (`_channel_shuffles`), and the shrink check verifies
    every pruned network, so an unmapped or skipped piece cannot ship a wrong network.
    """
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.graph import DependencyGraph

    if getattr(DependencyGraph, "_edge_sparse_tolerant", False):
        return
    plain_reshape = index_mapping.update_reshape_index_mapping

    def reshape(graph, node):
        try:
            return plain_reshape(graph, node)
        except ZeroDivisionError:
            return None

    plain_group = DependencyGraph.get_pruning_group

    def group(self, module, fn, idxs):
        try:
            return plain_group(self, module, fn, idxs)
        except IndexError:
            _UNBUILDABLE.append(module)
            from torch_pruning.dependency.group import Group

            return Group()  # empty: get_all_groups (below) drops it

    plain_all = DependencyGraph.get_all_groups

    def all_groups(self, *a, **kw):
        return (g for g in plain_all(self, *a, **kw) if len(g))

    index_mapping.update_reshape_index_mapping = reshape
    DependencyGraph.get_pruning_group = group
    DependencyGraph.get_all_groups = all_groups
    DependencyGraph._edge_sparse_tolerant = True


@CRITERIA.register("l1")
def _l1():
    import torch_pruning as tp
    return tp.importance.GroupMagnitudeImportance(p=1)


@CRITERIA.register("l2")
def _l2():
    import torch_pruning as tp
    return tp.importance.GroupMagnitudeImportance(p=2)


@CRITERIA.register("taylor")
def _taylor():
    import torch_pruning as tp
    return tp.importance.GroupTaylorImportance()


# --------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class LayerStat:
    name: str
    kind: str  # "conv" | "dwconv" | "linear"
    in_channels: int
    out_channels: int
    params: int
    macs: int


def profile(model: nn.Module, example_input: torch.Tensor) -> list[LayerStat]:
    """Per conv/linear layer: channels, params and MACs for one forward pass of `example_input`."""
    stats: list[LayerStat] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(m, inp, out):
        p = sum(t.numel() for t in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            macs = out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * k
            # a conv of one input channel per group with more outputs (FastViT's 48 -> 96 downsample) is grouped: onnx2tf
            # writes it as a CONV_2D, not a depthwise conv
            kind = "dwconv" if m.groups > 1 and m.groups == m.in_channels == m.out_channels else "conv"
            stats.append(LayerStat(names[m], kind, m.in_channels, m.out_channels, p, int(macs)))
        else:
            stats.append(LayerStat(names[m], "linear", m.in_features, m.out_features, p, m.in_features * m.out_features))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(params of the whole model, MACs of its conv/linear layers) for one image."""
    params = sum(p.numel() for p in model.parameters())
    return params, sum(s.macs for s in profile(model, example_input))


# --------------------------------------------------------------------------- pruning

@dataclass
class PruneResult:
    model: nn.Module  # plain, physically smaller module (no masks, no hooks), in eval mode
    params: int
    macs: int
    dense_params: int
    dense_macs: int
    record: dict  # JSON-serialisable; `replay(dense_model, example_input, record)` rebuilds `model`
    shrink_max_abs_diff: float  # max |masked dense - shrunk| over the check batch
    layers: list[LayerStat] = field(default_factory=list)
    dense_layers: list[LayerStat] = field(default_factory=list)

    @property
    def mac_ratio(self) -> float:
        return self.dense_macs / max(1, self.macs)

    def table(self) -> str:
        """Per-layer channels, params and MACs before/after, as a readable table."""
        after = {s.name: s for s in self.layers}
        rows = [f"{'layer':<28} {'channels in→out (dense)':>24} {'kept':>12} {'MACs dense':>12} {'MACs kept':>11}"]
        for d in self.dense_layers:
            a = after.get(d.name)
            kept = f"{a.in_channels}→{a.out_channels}" if a else "removed"
            rows.append(f"{d.name:<28} {f'{d.in_channels}→{d.out_channels}':>24} {kept:>12} {d.macs:>12,} {a.macs if a else 0:>11,}")
        rows.append(f"{'total':<28} {'':>24} {'':>12} {self.dense_macs:>12,} {self.macs:>11,}")
        rows.append(f"params {self.dense_params:,} -> {self.params:,}; MACs ÷{self.mac_ratio:.2f}")
        return "\n".join(rows)


def _pruner_class():
    """Torch-Pruning's MetaPruner with one policy changed: how `round_to` rounds.

    Upstream rounds the *kept* channels down to the multiple, so a 16-channel layer asked to keep 7
    keeps 0 — and then TP skips that layer entirely (it would remove every channel). The result is
    that *higher* sparsity can leave *more* MACs. We round the kept count to the nearest multiple,
    never below one multiple (or the layer's own width if that is smaller), so MACs fall
    monotonically as sparsity rises and every kept width is kernel-friendly.
    """
    import torch_pruning as tp

    class RoundingPruner(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            kept = current_channels - n_pruned
            kept = max(round_to, int(round(kept / round_to)) * round_to)
            return max(0, current_channels - min(kept, current_channels))

    return RoundingPruner


def _classifier_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Layers whose outputs are the model's outputs: never pruned."""
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            out = model(example_input[:1])
        except Exception as e:
            raise EdgeSparseError(
                f"Torch-Pruning cannot trace this model: it does not run on example_input of shape "
                f"{tuple(example_input.shape)} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        finally:
            model.train(was)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise EdgeSparseError(f"the model must return (batch, classes) logits; it returned {type(out).__name__} "
                                  f"{tuple(getattr(out, 'shape', ()))}")
    n_out = out.shape[1]
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    heads = [m for m in last if isinstance(m, nn.Linear) and m.out_features == n_out]
    return heads or last[-1:]


@dataclass
class Block:
    """A block that can be dropped whole: a residual block (with its residual branch silenced it passes its input
    through) or, in a network without one, a plain unit that keeps its input's shape (`residual_blocks(plain=True)`)."""
    name: str  # module path
    contribution: float  # mean |block(x) - x| / |x| on real images: how much the block changes what it is given
    residual: bool = True  # False: a plain unit (a ShuffleNet unit, a fire module): dropping it removes a layer


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def residual_blocks(model: nn.Module, images: torch.Tensor, tolerance: float = 1e-5, plain: bool = False) -> list[Block]:
    """The model's residual blocks that can be removed whole (depth pruning), outermost first, with their contribution.

    A block is a module whose output has its input's shape and which becomes the identity on these images when
    the norm layers' affine parameters and every conv / linear bias inside it are zeroed: its residual branch then
    outputs zero and the skip carries the input through (a projection shortcut, an SE gate (sigmoid(0) = 0.5) or a
    final activation that clips the input makes it fail the test, and it is not offered). Containers whose
    children with convs are all blocks (a stage of blocks) are not offered themselves: their blocks are. A block
    inside another offered block is not offered. Read on the model as it is (no copy is kept).

    `plain=True`, in a network with no residual block at all (ShuffleNetV2's units concatenate and shuffle, SqueezeNet
    has no skip): the modules with a conv that keep their input's shape (a stride-1 ShuffleNet unit, a fire module
    whose output is as wide as its input) are offered instead, by the same outermost / container rules, marked
    `residual=False`. Dropping one removes a layer of the network, not a branch beside a skip: the fine-tune has more
    to relearn, and the allocator offers them only where their input and output widths move together."""
    model = model.eval()
    io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names = {m: n for n, m in model.named_modules() if n}
    hooks = []

    seen: dict[str, torch.Tensor] = {}

    def pre(mod, args):  # the input copied before the forward: a module may write it in place (`x += f(x)`)
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].ndim == 4 and names[mod] not in io:
            seen[names[mod]] = args[0].detach().clone()

    def hook(mod, args, out):
        x = seen.pop(names[mod], None)
        if x is not None and isinstance(out, torch.Tensor) and out.shape == x.shape and names[mod] not in io:
            io[names[mod]] = (x, out.detach().clone())

    for m, n in names.items():
        if any(isinstance(c, nn.Conv2d) for c in m.modules()):
            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    ok: dict[str, float] = {}
    shaped: dict[str, float] = {}  # modules that keep the shape but are not residual (for `plain`)
    for n, (x, y) in io.items():
        silent = copy.deepcopy(dict(model.named_modules())[n]).eval()
        with torch.no_grad():
            for m in silent.modules():
                if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                    m.weight.zero_()
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                    m.bias.zero_()
            try:
                passed = silent(x.clone())  # (an in-place module would return `x` itself: the identity, falsely)
            except Exception:  # noqa: BLE001 - a module that does not run alone on its captured input is no block
                continue
        scale = float(x.abs().max()) or 1.0
        changed = float(((y - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())
        if passed.shape == x.shape and float((passed - x).abs().max()) <= tolerance * scale:
            ok[n] = changed
        else:
            shaped[n] = changed
    residual = bool(ok)
    if plain and not ok:
        ok = shaped
    mods = dict(model.named_modules())

    def container_of_blocks(n: str) -> bool:  # every child with a conv is a block, or again such a container
        if not residual and not isinstance(mods[n], (nn.Sequential, nn.ModuleList)):
            return False  # a plain unit (ShuffleNet's) is offered whole, not its branch of shape-keeping convs
        kids = [f"{n}.{c}" for c, m in mods[n].named_children() if any(isinstance(x, nn.Conv2d) for x in m.modules())]
        return bool(kids) and all(k in ok or container_of_blocks(k) for k in kids)

    offered = [n for n in ok if not container_of_blocks(n)]
    top = [n for n in offered if not any(n.startswith(o + ".") for o in offered if o != n)]
    order = [n for n in names.values() if n in top]  # the model's own order
    return [Block(n, round(ok[n], 6), residual) for n in order]


def drop_blocks(model: nn.Module, names) -> nn.Module:
    """Replace each named module of `model` with `nn.Identity` (in place): the residual blocks `residual_blocks`
    offered, removed whole."""
    have = dict(model.named_modules())
    for n in names:
        parent, _, child = n.rpartition(".")
        if n not in have or parent not in have:
            raise EdgeSparseError(f"cannot drop block {n}: the model has no such module")
        setattr(have[parent], child, nn.Identity())
    return model


def _zero_out_channels(module: nn.Module, idxs: list[int]) -> None:
    with torch.no_grad():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight[idxs] = 0
            if module.bias is not None:
                module.bias[idxs] = 0
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is not None:
                module.weight[idxs] = 0
                module.bias[idxs] = 0


def _channel_shuffles(model: nn.Module, example_input: torch.Tensor) -> tuple[int, set[tuple[str, bool]]]:
    """The channel shuffles in `model` (a 4-d (N, C, H, W) viewed as (N, G, C/G, H, W)): the largest G (1 if none),
    and the (module, out-channels?) sides whose channels the shuffles permute: the output channels of the convs and
    BatchNorms that produce a shuffled tensor, the input channels of the convs that consume one."""
    from edge_sparse.latency.ops import _capture, _shape

    try:
        gm = _capture(model, example_input)  # the latency model's trace: the same graph and shapes
    except EdgeSparseError:  # an untraceable model has no shuffle we can see; the shrink check still runs
        return 1, set()
    shape = lambda n: _shape(n) or None  # noqa: E731
    mods = dict(gm.named_modules())
    g, touched, seen = 1, set(), set()

    def nodes_in(args):
        for a in args:
            if isinstance(a, torch.fx.Node):
                yield a
            elif isinstance(a, (list, tuple)):
                yield from nodes_in(a)

    def back(n):
        if n in seen:
            return
        seen.add(n)
        m = mods.get(n.target) if n.op == "call_module" else None
        if m is not None:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                touched.add((n.target, True))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                touched.add((n.target, False))
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                return  # a conv starts a new channel space
        for a in nodes_in(n.args):
            back(a)

    def forward(n):
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            m = mods.get(u.target) if u.op == "call_module" else None
            if m is not None and isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                touched.add((u.target, False))
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    continue
                touched.add((u.target, True))
            forward(u)

    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target in ("view", "reshape") and n.args and isinstance(n.args[0], torch.fx.Node):
            src, out = shape(n.args[0]), shape(n)
            if src is not None and out is not None and len(src) == 4 and len(out) == 5 and out[1] * out[2] == src[1]:
                g = max(g, int(out[1]))
                back(n.args[0])
                forward(n)
    return g, touched


def tied_halves(group) -> int:
    """k > 1 when a layer in Torch-Pruning's `group` is k times narrower than its root, so that k root channels share
    one of its channels: GhostNet's module concatenates a conv's output with a depthwise conv of that output, and the
    root channels j and j + C/2 both come from the conv's channel j. They must go together (a root channel alone
    leaves the concat's halves unequal); 1 for an ordinary group."""
    n, k = len(group[0].idxs), 1
    for dep, _ in group:
        mod, out = dep.target.module, group._DG.is_out_channel_pruning_fn(dep.handler)
        width = 0
        if isinstance(mod, nn.Conv2d):
            width = mod.out_channels if out else mod.in_channels
        elif isinstance(mod, nn.Linear):
            width = mod.out_features if out else mod.in_features
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            width = mod.num_features
        if 0 < width < n and n % width == 0:
            k = math.lcm(k, n // width)
    return k if n % k == 0 else 1


def _unmappable_groups(pruner, model: nn.Module, ignored: list, importance, shuffled: set[tuple[str, bool]], *,
                       taylor: bool) -> list[dict]:
    """Coupled groups whose channel indices Torch-Pruning cannot map through the graph, each as
    {"layers": [...], "why": "..."}; the caller keeps their layers unpruned.

    A channel shuffle (view to (N, G, C/G, H, W), transpose, view back) permutes channels between the layers on either
    side; Torch-Pruning's dependency graph follows the reshape but not the permutation, so the indices it derives for
    the group run past a tensor's width. Ranking the group (what pruning does first) raises then; such a group is kept.
    Taylor importance needs gradients, which are not there yet: its groups are not checked here (the shrink check
    after pruning still is).
    """
    name = {m: n for n, m in model.named_modules()}
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for group in pruner.DG.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            layers = list(dict.fromkeys(
                name[d.target.module] for d, _ in group if d.target.module in name
                and isinstance(d.target.module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))))
            sides = {(name[d.target.module], bool(pruner.DG.is_out_channel_pruning_fn(d.handler)))
                     for d, _ in group if d.target.module in name}
            through = sorted(n for n, _ in sides & shuffled)
            if through:
                bad.append({"layers": layers, "why": f"its channels pass through a channel shuffle ({through[0]}), a "
                                                     f"permutation Torch-Pruning's graph does not follow"})
                continue
            if tied_halves(group) > 1:
                bad.append({"layers": layers, "why": "a layer in it is narrower than the group's root (a ghost "
                                                     "module's concat of a conv and a depthwise conv of it; a chunk): "
                                                     "its slices must narrow at the same channels, which "
                                                     "fixed-sparsity pruning does not do (a latency budget's "
                                                     "allocation does)"})
                continue
            if taylor:
                continue
            _, why = rank_group(group, importance)
            if why:
                bad.append({"layers": layers, "why": why})
    return bad


def rank_group(group, importance):
    """(importance(group), None), or (None, why) when Torch-Pruning cannot map the group's channel indices through
    the graph (a shuffle): ranking raises then, and the group is kept whole."""
    try:
        return importance(group), None
    except (IndexError, RuntimeError) as e:
        return None, (f"Torch-Pruning cannot map this group's channels through the graph: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")


def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise EdgeSparseError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    sparsity: float = 0.5,
    criterion: str = "bn_scale",
    round_to: Optional[int] = None,
    *,
    global_pruning: bool = True,
    layer_sparsity: Optional[dict[str, float]] = None,
    max_layer_sparsity: float = 0.9,
    ignored_layers: Optional[list[str]] = None,
    taylor_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    check_batch: Optional[torch.Tensor] = None,
    iterative_steps: int = 1,
    between_steps: Optional[Callable[[nn.Module, int], None]] = None,
) -> PruneResult:
    """Remove `sparsity` of the prunable channels, chosen by `criterion`, and physically shrink.

    The caller's `model` is not modified. `global_pruning` ranks channels across layers (so the
    sparsity lands where channels matter least); `layer_sparsity` sets per-layer ratios by module name.
    `max_layer_sparsity` keeps at least that fraction of any layer's channels from going. The
    classifier's outputs and the input layer's inputs are never pruned.

    Iterative pruning: with `iterative_steps=k` the sparsity is reached in k equal steps, and
    `between_steps(model, step)` (e.g. a short fine-tune, in place) runs after each step but the last,
    so later steps rank channels on the recovered network. Each step is shrink-checked.
    """

    _check_sparsity(sparsity)
    imp_factory = CRITERIA.get(criterion)
    if criterion == "taylor" and taylor_batch is None:
        raise EdgeSparseError("criterion 'taylor' needs gradients: pass taylor_batch=(images, labels)")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise EdgeSparseError(f"round_to must be a positive integer channel multiple, got {round_to!r}")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise EdgeSparseError(f"iterative_steps must be a positive integer, got {iterative_steps!r}")
    if not 0 < max_layer_sparsity < 1:
        raise EdgeSparseError(f"max_layer_sparsity must be in (0, 1), got {max_layer_sparsity!r}")

    dense = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    named = dict(work.named_modules())
    ignored = _classifier_layers(work, example_input)  # also checks the model runs on example_input
    dense_layers = profile(dense, example_input)
    dense_params, dense_macs = count(dense, example_input)
    for n in ignored_layers or []:
        if n not in named:
            raise EdgeSparseError(f"ignored layer {n!r} is not a module of the model")
        ignored.append(named[n])
    ratio_dict = None
    if layer_sparsity:
        ratio_dict = {}
        for n, r in layer_sparsity.items():
            if n not in named:
                raise EdgeSparseError(f"layer_sparsity names {n!r}, which is not a module of the model")
            if not 0 <= r < 1:
                raise EdgeSparseError(f"layer_sparsity[{n!r}] = {r!r} would remove every channel; use a value in [0, 1)")
            ratio_dict[named[n]] = r

    shuffle_groups, shuffled = _channel_shuffles(work, example_input)
    renormalized = renormalized_batchnorms(work, example_input) if criterion == "bn_scale" else []
    importance = (lambda: imp_factory(renormalized)) if renormalized else imp_factory
    if shuffle_groups > 1:  # a channel shuffle views C as (G, C/G): every width it sees must stay divisible by G
        round_to = math.lcm(round_to or 1, shuffle_groups)

    def make_pruner():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _pruner_class()(
                    work, example_input[:1], importance=importance(), global_pruning=global_pruning,
                    pruning_ratio=float(sparsity), pruning_ratio_dict=ratio_dict,
                    max_pruning_ratio=max_layer_sparsity, ignored_layers=ignored, round_to=round_to,
                    iterative_steps=iterative_steps,
                )
        except EdgeSparseError:
            raise
        except Exception as e:
            raise EdgeSparseError(
                f"Torch-Pruning cannot trace this model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"the model must run on example_input of shape {tuple(example_input.shape)} with traceable ops"
            ) from None

    _tolerate_torch_pruning()
    _UNBUILDABLE.clear()
    pruner = make_pruner()
    unprunable = _unmappable_groups(pruner, work, ignored, importance(), shuffled, taylor=criterion == "taylor")
    name_of_module = {m: n for n, m in named.items()}
    unprunable += [{"layers": [name_of_module[m]], "why": "Torch-Pruning could not build its coupled group (its index "
                    "mapping through a concat ran out of range)"}
                   for m in dict.fromkeys(_UNBUILDABLE) if m in name_of_module]
    if unprunable:  # kept whole, and said so: the rest of the network is still pruned
        ignored = ignored + [named[n] for u in unprunable for n in u["layers"]]
        pruner = make_pruner()

    probe = check_batch if check_batch is not None else torch.randn(8, *example_input.shape[1:],
                                                                     generator=torch.Generator().manual_seed(0))
    dg = pruner.DG
    plan: list[str] = []
    diff = 0.0
    for step in range(iterative_steps):
        if criterion == "taylor":
            x, y = taylor_batch
            work.zero_grad()
            nn.functional.cross_entropy(work(x), y).backward()
        masked = copy.deepcopy(work)
        masked_named = dict(masked.named_modules())
        name_of = {m: n for n, m in work.named_modules()}
        for group in pruner.step(interactive=True):
            coupled = []
            for dep, idxs in group:
                name = name_of.get(dep.target.module)
                if name is None:
                    continue
                out = dg.is_out_channel_pruning_fn(dep.handler)
                if out:
                    _zero_out_channels(masked_named[name], [int(getattr(i, "idx", i)) for i in idxs])
                coupled.append(f"{name} {'out' if out else 'in'}")
            plan.append(f"step {step + 1}: {len(group[0].idxs)} ch: " + " => ".join(dict.fromkeys(coupled)))
            group.prune()
        for p in work.parameters():
            p.grad = None
        work.eval()
        with torch.no_grad():
            try:
                diff = max(diff, float((masked.eval()(probe) - work(probe)).abs().max()))
            except RuntimeError as e:
                raise EdgeSparseError(f"shrink check failed at step {step + 1}: the pruned network no longer runs "
                                      f"({str(e).splitlines()[0][:160]}); a reshape in its forward needs widths "
                                      f"Torch-Pruning did not keep (set round_to to that multiple)") from None
        if diff > SHRINK_TOLERANCE:
            raise EdgeSparseError(
                f"shrink check failed at step {step + 1}: masked and shrunk outputs differ by {diff:.3g} "
                f"(> {SHRINK_TOLERANCE}); the pruned channels were not removed consistently"
            )
        if between_steps is not None and step < iterative_steps - 1:
            between_steps(work, step)
    shrunk = work.eval()
    params, macs = count(shrunk, example_input)
    history = [[n, bool(out), [int(i) for i in idx]] for n, out, idx in dg.pruning_history()]
    record = {
        "format": RECORD_FORMAT,
        "criterion": criterion,
        "sparsity": float(sparsity),
        "round_to": round_to,
        "global_pruning": global_pruning,
        "input_shape": list(example_input.shape[1:]),
        "iterative_steps": iterative_steps,
        "history": history,
        "plan": plan,
        "channels": {s.name: [s.in_channels, s.out_channels] for s in profile(shrunk, example_input)},
        "unprunable": unprunable,
    }
    return PruneResult(shrunk, params, macs, dense_params, dense_macs, record, diff,
                       profile(shrunk, example_input), dense_layers)


def replay(dense_model: nn.Module, record: dict, example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """Rebuild the shrunk architecture by replaying `record` on a dense model (weights follow the slicing)."""
    import torch_pruning as tp

    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise EdgeSparseError(f"not a pruning record of format {RECORD_FORMAT!r}")
    model = copy.deepcopy(dense_model).eval()
    if example_input is None:
        example_input = torch.zeros(1, *record["input_shape"])
    _tolerate_torch_pruning()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(model, example_input[:1], verbose=False)
        try:
            dg.load_pruning_history([list(h) for h in record["history"]])
        except (AttributeError, IndexError, RuntimeError) as e:
            raise EdgeSparseError(f"pruning record does not fit this model ({type(e).__name__}: {e})") from None
    drop_blocks(model, record.get("dropped", []))  # residual blocks removed whole, after the pruning (allocate)
    got = {s.name: [s.in_channels, s.out_channels] for s in profile(model, example_input)}
    if got != record["channels"]:
        bad = next(k for k in record["channels"] if got.get(k) != record["channels"][k])
        raise EdgeSparseError(f"pruning record does not fit this model: layer {bad} has {got.get(bad)}, record says {record['channels'][bad]}")
    return model
