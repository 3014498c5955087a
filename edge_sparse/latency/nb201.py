"""NAS-Bench-201 networks from their cell strings: the architectures behind the reference device timings.

In:  a cell string such as `|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|`
Out: the CIFAR network of NAS-Bench-201 (Dong & Yang, ICLR 2020) as a plain `nn.Module` (32x32x3 in, logits
     out), built from nn.Conv2d / nn.BatchNorm2d / nn.ReLU / nn.AvgPool2d / nn.AdaptiveAvgPool2d / nn.Linear,
     and `cell_info`: the cell's edges, which of them run, its op mix, and whether it is degenerate.
Run: `python -c "from edge_sparse.latency import nb201; print(nb201.build('|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_1x1~2|'))"`

The network follows the reference code (D-X-Y/AutoDL-Projects, `TinyNetwork`, `InferCell`, `ResNetBasicblock`,
`cell_operations.OPS`): stem Conv3x3(3->C)+BN; three stages of N cells with C, 2C, 4C channels; between stages a
residual reduction block (ReLU-Conv3x3/s2-BN, ReLU-Conv3x3-BN, shortcut AvgPool2d(2,2) then Conv1x1); BN-ReLU,
global average pooling, Linear. A cell has four nodes; node j (1..3) is the sum of one edge from every earlier
node; an edge is `none` (zero), `skip_connect` (identity), `nor_conv_1x1` / `nor_conv_3x3` (ReLU->Conv->BN) or
`avg_pool_3x3` (stride 1, padding 1, count_include_pad=False). Module names: `cells[k].edges["e21"]` is the
edge into node 2 from node 1.

Which edges the module contains (`ops=`):
  "reference" every edge, `none` as `Zero` (x * 0), exactly the reference network as HW-NAS-Bench built it.
  "live"      only edges on a path from the cell's input to its output (what a clean export would run). An
              edge whose input is an all-zero node (every path to it passes a `none`) is left out: it adds a
              constant (ReLU(0)=0, Conv(0)=0, so BN's shift), zero with untrained BN statistics.
  "executed"  (default) what the 15,284 non-degenerate reference timings show ran on the Pi 4 / Pixel 3
              (`edge_sparse/latency/reference/README.md`): the live edges, plus
              (a) every op whose input is an all-zero node: the zeros are computed at run time (`Zero` of the
                  cell input) and the op runs at full cost (replacing such a conv3x3 by `none` saves a median
                  16.0 ms on the Pi 4, about what a live conv3x3 costs), and
              (b) a conv whose output reaches nothing but `none` edges *and* is its node's only value (median
                  16.3 ms for a 3x3, 3.0 ms for a 1x1): the dead node's other inputs are `none` or skips of an
                  all-zero node, a skip passes its source's value on, the node's out-edges are all `none`, and
                  for node 1 node 2 is live or all-`none` (`_dead_conv_sinks`; checked by replacing each such
                  conv by `none` in the exhaustive reference); its output is kept alive as `Zero(node)` added to
                  the cell output. Every other unused op is absent, as on the device: an unused pool or skip, or
                  unused edges into a node that sums two or more of them, cost nothing measurable.
              A plausible mechanism for (b), not confirmed: the converter folds the multiply-by-zero into the
              preceding conv's weights (the conv then runs with zero weights) and folds x*0 -> 0 elsewhere.
              Fitting per-op counts by least squares on all reference networks gives a cross-validated
              median |error| of 5.6 % (Pi 4) with these rules, 6.2 % with (a) only, 8.7-10.4 % with "live"
              and 8.3 % with "reference" (every op counted).
  "reference" and "executed" compute the same function; "live" differs only by the constants above.
Degenerate cells (no path from input to output without a `none`: the network's output does not depend on
its input) are refused by `build`: their timings are inconsistent (103 of 125 whose output node has only
`none` inputs measured ~0.012 ms, i.e. folded to a constant; the rest, and the other 216, 0.06-34 ms).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from edge_sparse.errors import EdgeSparseError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4  # node 0 is the cell input, node 3 its output
INPUT_SHAPE = (1, 3, 32, 32)  # one CIFAR image, NCHW
MIX_KEYS = ("conv3x3", "conv1x1", "pool", "skip")
_MIX_OF = {"nor_conv_3x3": "conv3x3", "nor_conv_1x1": "conv1x1", "avg_pool_3x3": "pool", "skip_connect": "skip"}
_FORM = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"

BuildOps = Literal["executed", "live", "reference"]
BUILD_OPS = ("executed", "live", "reference")


@dataclass(frozen=True)
class Edge:
    """One edge of a cell: `op` applied to node `src`, summed into node `dst`."""

    dst: int  # 1..3
    src: int  # 0..dst-1
    op: str  # one of OPS

    @property
    def key(self) -> str:
        """Module name of this edge inside a cell: e<dst><src>."""
        return f"e{self.dst}{self.src}"


@dataclass(frozen=True)
class CellInfo:
    """What a cell string computes: its edges, the ones that run, its op mix, degeneracy."""

    arch: str  # the cell string as given
    edges: tuple[Edge, ...]  # all six, in string order
    live: tuple[Edge, ...]  # non-`none` edges on a path input -> output
    executed: tuple[Edge, ...]  # edges that ran on the reference devices (see the module docstring)
    zero_nodes: tuple[int, ...]  # nodes 1..3 that are all-zero (every path from the input passes a `none`)
    degenerate: bool  # the output node is all-zero: the network ignores its input

    @property
    def mix(self) -> dict[str, int]:
        """Op counts on live edges (conv3x3, conv1x1, pool, skip), plus `none` (none edges in the cell) and
        `dead` (non-none edges that are not live)."""
        m = {k: 0 for k in MIX_KEYS}
        for e in self.live:
            m[_MIX_OF[e.op]] += 1
        m["none"] = sum(e.op == "none" for e in self.edges)
        m["dead"] = sum(e.op != "none" for e in self.edges) - len(self.live)
        return m

    @property
    def signature(self) -> str:
        """The op mix in one short string, e.g. `3x3:2 1x1:1 pool:0 skip:1 none:2 dead:0`."""
        m = self.mix
        return (f"3x3:{m['conv3x3']} 1x1:{m['conv1x1']} pool:{m['pool']} skip:{m['skip']} "
                f"none:{m['none']} dead:{m['dead']}")


def _bad(arch: str, what: str) -> EdgeSparseError:
    return EdgeSparseError(f"cell {arch!r}: {what}; expected NAS-Bench-201's form {_FORM} with ops "
                           f"{', '.join(OPS)}")


def parse(arch: str) -> tuple[Edge, ...]:
    """The six edges of a cell string, checked strictly (no whitespace, inputs in order 0..j-1)."""
    if not isinstance(arch, str):
        raise EdgeSparseError(f"cell string must be a str, got {type(arch).__name__}")
    groups = arch.split("+")
    if len(groups) != NODES - 1:
        raise _bad(arch, f"{len(groups)} node group(s) separated by '+', need {NODES - 1}")
    edges = []
    for dst, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise _bad(arch, f"node {dst}'s group {group!r} must start and end with '|'")
        tokens = group[1:-1].split("|")
        if len(tokens) != dst:
            raise _bad(arch, f"node {dst} has {len(tokens)} edge(s) ({group!r}), needs {dst} (one from each "
                             f"of nodes 0..{dst - 1})")
        for src, tok in enumerate(tokens):
            op, sep, inp = tok.partition("~")
            if not sep:
                raise _bad(arch, f"edge {tok!r} into node {dst} is not op~input")
            if op not in OPS:
                raise EdgeSparseError(f"cell {arch!r}: unknown op {op!r} on the edge into node {dst} from node "
                                      f"{inp}; valid ops: {', '.join(OPS)}")
            if inp != str(src):
                raise _bad(arch, f"edge {tok!r} is node {dst}'s input #{src}, so it must read node {src} "
                                 f"(~{src}), not ~{inp}")
            edges.append(Edge(dst, src, op))
    return tuple(edges)


def _dead_conv_sinks(edges, into, fwd, bwd) -> list[Edge]:
    """Rule b of "executed": convs that ran although their output reaches the cell output only through `none`.

    A dead node j (nothing live reads it) whose out-edges are all `none` and whose value is exactly one conv's
    output (its other inputs are `none`, or skips of an all-zero node; a skip of another node passes that
    node's value on) keeps that conv running; for node 1 only when node 2 is live or all-`none` too (with a
    dead node 2 that has a real input, the conv is dropped: 0.0 ms measured)."""
    def value(j: int) -> list[Edge]:  # the non-zero terms node j sums, skips followed back
        terms: list[Edge] = []
        for x in into[j]:
            if x.op == "none" or (x.op == "skip_connect" and not fwd[x.src]):
                continue
            terms += value(x.src) if x.op == "skip_connect" and x.src > 0 else [x]
        return terms

    out = []
    for j in range(1, NODES - 1):
        if bwd[j] or not fwd[j] or any(e.op != "none" for e in edges if e.src == j):
            continue
        if j == 1 and not (bwd[2] or all(x.op == "none" for x in into[2])):
            continue
        terms = value(j)
        if len(terms) == 1 and terms[0].op.startswith("nor_conv"):
            out.append(terms[0])
    return out


def cell_info(arch: str) -> CellInfo:
    """Parse `arch` and work out which of its edges are live, run on the devices, or are degenerate."""
    edges = parse(arch)
    into = {j: [e for e in edges if e.dst == j] for j in range(1, NODES)}
    # fwd[j]: node j depends on the input (a path from node 0 without `none`); bwd[i]: node i reaches the output
    fwd = {0: True}
    for j in range(1, NODES):
        fwd[j] = any(e.op != "none" and fwd[e.src] for e in into[j])
    bwd = {NODES - 1: True}
    for i in range(NODES - 2, -1, -1):
        bwd[i] = any(e.op != "none" and bwd[e.dst] for e in edges if e.src == i)
    live = tuple(e for e in edges if e.op != "none" and fwd[e.src] and bwd[e.dst])
    degenerate = not fwd[NODES - 1]
    executed: set[Edge] = {e for e in edges if e.op != "none" and bwd[e.dst]}  # live, or rule a
    executed |= set(_dead_conv_sinks(edges, into, fwd, bwd))  # rule b
    # a node read by an executed edge is computed in full (all its non-none inputs), as in the reference
    changed = True
    while changed:
        changed = False
        for e in list(executed):
            for x in into.get(e.src, []):
                if x.op != "none" and x not in executed:
                    executed.add(x)
                    changed = True
    order = {e: n for n, e in enumerate(edges)}
    return CellInfo(arch=arch, edges=edges, live=live,
                    executed=tuple(sorted(executed, key=order.__getitem__)),
                    zero_nodes=tuple(j for j in range(1, NODES) if not fwd[j]), degenerate=degenerate)


# ---------------------------------------------------------------------------------------------- modules


class Zero(nn.Module):
    """`none`: x * 0 (the reference's `Zero` for stride 1 and equal channels). Traces to one multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def _relu_conv_bn(c: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride=1, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c))


def _edge_module(op: str, c: int) -> nn.Module:
    if op == "nor_conv_3x3":
        return _relu_conv_bn(c, 3)
    if op == "nor_conv_1x1":
        return _relu_conv_bn(c, 1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if op == "skip_connect":
        return nn.Identity()
    return Zero()


def _add(terms: list[torch.Tensor]) -> torch.Tensor:
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


class Cell(nn.Module):
    """One NAS-Bench-201 cell with `channels` channels in and out, holding only the edges `ops` selects."""

    def __init__(self, info: CellInfo, channels: int, ops: BuildOps = "executed"):
        super().__init__()
        if ops == "reference":
            keep = info.edges
        elif ops == "live":
            keep = info.live
        else:
            keep = info.executed
        self.arch = info.arch
        self.ops = ops
        self.edges = nn.ModuleDict({e.key: _edge_module(e.op, channels) for e in keep})
        needed = {e.src for e in keep} | {NODES - 1}
        # the plan: per node, the (edge key, source node) terms summed into it; an all-zero node that is read
        # but has no kept inputs is materialised as Zero(cell input)
        self._terms = {j: [(e.key, e.src) for e in keep if e.dst == j] for j in range(1, NODES)}
        self._zero_inputs = tuple(j for j in range(1, NODES - 1) if j in needed and not self._terms[j])
        # nodes computed but read by nothing kept (rule b of "executed"): Zero(node) is added to the output
        read = {e.src for e in keep}
        self._sinks = tuple(j for j in range(1, NODES - 1) if self._terms[j] and j not in read)
        if self._zero_inputs or self._sinks:
            self.zero = Zero()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes: dict[int, torch.Tensor] = {0: x}
        for j in range(1, NODES):
            terms = [self.edges[k](nodes[i]) for k, i in self._terms[j]]
            if terms:
                nodes[j] = _add(terms)
            elif j in self._zero_inputs:
                nodes[j] = self.zero(x)
        out = nodes[NODES - 1]
        for j in self._sinks:
            out = out + self.zero(nodes[j])
        return out

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, ops={self.ops!r}"


class ResidualReduction(nn.Module):
    """NAS-Bench-201's reduction block (ResNetBasicblock, stride 2): halves H and W, changes the channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(cout))
        self.conv_b = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False),
                                    nn.BatchNorm2d(cout))
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(cin, cout, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Net(nn.Module):
    """The NAS-Bench-201 CIFAR network ("infer.tiny"): stem, 3 stages of N cells, 2 reductions, head."""

    def __init__(self, arch: str, C: int, N: int, num_classes: int, ops: BuildOps):
        super().__init__()
        info = cell_info(arch)
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        c = C
        for stage in range(3):
            if stage:
                cells.append(ResidualReduction(c, 2 * c))
                c *= 2
            cells.extend(Cell(info, c, ops) for _ in range(N))
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.global_pooling(out), 1))


def build(arch: str, C: int = 16, N: int = 5, num_classes: int = 10, ops: BuildOps = "executed") -> nn.Module:
    """The NAS-Bench-201 network of cell string `arch` (in eval mode), input 1x3x32x32.

    `ops` picks which edges the module holds (see the module docstring): "executed" (default, what ran on the
    reference devices), "live" (only edges on an input->output path) or "reference" (all, `none` as x*0).
    A degenerate cell (output independent of the input) is refused."""
    for name, v in (("C", C), ("N", N), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EdgeSparseError(f"nb201.build: {name} must be a positive int, got {v!r}")
    if ops not in BUILD_OPS:
        raise EdgeSparseError(f"nb201.build: ops={ops!r} is not one of {', '.join(BUILD_OPS)}")
    info = cell_info(arch)
    if info.degenerate:
        raise EdgeSparseError(f"cell {arch!r} is degenerate: every path from node 0 to node 3 passes a `none` "
                              f"edge, so the network's output does not depend on its input (a constant)")
    return NB201Net(arch, C, N, num_classes, ops).eval()


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Multiply-accumulates of one forward pass at batch 1: Conv2d and Linear layers (pooling, additions,
    BatchNorm and ReLU are not MACs)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def fc_hook(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(fc_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def layer_counts(model: nn.Module) -> dict[str, int]:
    """Number of modules of each plain type (Conv2d, BatchNorm2d, ReLU, AvgPool2d, Identity, Zero, Linear, ...)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if type(m) in (NB201Net, Cell, ResidualReduction, nn.Sequential, nn.ModuleDict):
            continue
        name = type(m).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts

