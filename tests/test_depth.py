"""Depth pruning: residual blocks dropped whole where every channel group at its narrowest width still misses the
budget (a stride-2 stem, a 3x3 conv over few channels and a grouped conv's per-group cost do not shrink with width:
GhostNet's first block, RegNet's grouped convs, FastViT's 7x7 depthwise convs).

Tiny real nets with each kind of module the test must tell apart: an identity residual block (ReLU after the add,
as torchvision's ResNet and RegNet write it), a stage of such blocks, a projection block, an SE gate, and a
residual block whose branch ends in a GELU MLP behind a BatchNorm'd conv (FastViT's)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edge_sparse import models
from edge_sparse.allocate import Allocator
from edge_sparse.errors import EdgeSparseError
from edge_sparse.pruning import drop_blocks, replay, residual_blocks

from _tables import synthetic_pricer


def cbn(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o))


class Basic(nn.Module):
    """ResNet's basic block: relu(x + bn(conv(relu(bn(conv(x)))))), with a projection where the shape changes."""

    def __init__(self, i, o, s=1):
        super().__init__()
        self.f = nn.Sequential(cbn(i, o, s=s), nn.ReLU(), cbn(o, o))
        self.proj = cbn(i, o, 1, s) if (i, s) != (o, 1) else None

    def forward(self, x):
        return torch.relu((x if self.proj is None else self.proj(x)) + self.f(x))


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class MlpBlock(nn.Module):
    """FastViT's ConvMlp behind a residual: x + fc2(gelu(fc1(bn(dwconv(x)))))."""

    def __init__(self, c):
        super().__init__()
        self.conv = cbn(c, c, 3, g=c)
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.conv(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbn(3, 16, s=2), nn.ReLU())
        self.stage1 = nn.Sequential(Basic(16, 16), Basic(16, 16))  # a stage of identity blocks: the blocks offered
        self.se = SE(16)  # x * gate: 0.5 x when silenced, never the identity
        self.down = Basic(16, 32, 2)  # a projection: not droppable
        self.mlp = MlpBlock(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.mlp(self.down(self.se(self.stage1(self.stem(x))))).mean((2, 3)))


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.05, 1.0)
            mod.running_var.data.uniform_(0.5, 2.0)
    return m


def _pricer(m, ex):
    """A deterministic 'measured' table: 2 us per op + 1 ns per MAC + 0.2 ns per activation element."""
    return synthetic_pricer(m, ex, fixed_in=3, per_op=2e-3, per_elem=2e-7, overhead=(0.01, 0.012))


def test_residual_blocks_are_the_modules_that_pass_their_input_through_when_silenced():
    m = _net()
    blocks = residual_blocks(m, torch.randn(8, 3, 32, 32))
    assert [b.name for b in blocks] == ["stage1.0", "stage1.1", "mlp"]
    assert all(b.contribution > 0 for b in blocks)
    # dropping one leaves a model that runs, with the block gone and its neighbours untouched
    x = torch.randn(2, 3, 32, 32)
    d = drop_blocks(_net(), ["stage1.1"])
    assert isinstance(d.stage1[1], nn.Identity) and d(x).shape == (2, 10)
    with pytest.raises(EdgeSparseError, match="no such module"):
        drop_blocks(_net(), ["stage9.0"])


def test_blocks_are_dropped_only_where_the_narrowest_widths_miss_the_budget(tmp_path):
    m, ex = _net(), torch.zeros(1, 3, 32, 32)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8, block_images=torch.randn(16, 3, 32, 32))
    assert [b.name for b in al.blocks] == ["stage1.0", "stage1.1", "mlp"]
    widths = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    assert al.narrowest()["p90"] < widths  # every block dropped is faster still
    # reachable by widths: no block goes
    a = al.allocate(widths + 0.3 * (pr.dense_p90_ms - widths), "importance")
    assert a is not None and a.drop == ()
    # between the two: blocks go, then the widths fill what is left
    budget = (al.narrowest()["p90"] + widths) / 2
    x = torch.randn(4, 3, 32, 32)
    for scoring in ("importance", "relative", "uniform"):
        a = al.allocate(budget, scoring)
        assert a is not None and a.drop and a.p90_ms <= budget, (scoring, a)
        assert "blocks dropped" in a.describe()
        res = al.apply(a)
        for name in a.drop:
            assert isinstance(res.model.get_submodule(name), nn.Identity)
        assert res.record["dropped"] == list(a.drop)
        assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)  # the allocator priced this model
        assert res.macs < res.dense_macs
        rebuilt = replay(m, res.record, ex)  # what a resumed build and the stage cache load
        assert torch.allclose(rebuilt(x), res.model(x), atol=1e-5)
    # the saved model (a stage's cache) loads back without the dropped blocks, same outputs
    models.save(res.model, tmp_path / "m", arch="test", kwargs={}, record=res.record)
    state = dict(res.model.state_dict())
    assert not any(k.startswith(tuple(n + "." for n in a.drop)) for k in state)
    # unreachable even with every block gone: None, as before
    assert al.allocate(al.narrowest()["p90"] * 0.9, "importance") is None


def test_no_blocks_without_images_and_none_in_a_plain_chain():
    m, ex = _net(), torch.zeros(1, 3, 32, 32)
    assert Allocator(m, ex, _pricer(m, ex), 8).blocks == []  # no images: widths only, as before
    chain = nn.Sequential(cbn(3, 16, s=2), nn.ReLU(), cbn(16, 16), nn.ReLU(), cbn(16, 16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    assert residual_blocks(chain, torch.randn(4, 3, 32, 32)) == []  # a conv that keeps the shape is no block


class Plain(nn.Module):
    """x + bn(conv(x)) with no activation after the add: dropping two neighbours changes what fuses where."""

    def __init__(self, c):
        super().__init__()
        self.f = cbn(c, c)

    def forward(self, x):
        return x + self.f(x)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbn(3, 16, s=2)
        self.blocks = nn.Sequential(Plain(16), Plain(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.blocks(self.stem(x))).mean((2, 3)))


def test_an_allocation_that_drops_neighbours_is_priced_as_the_network_it_builds():
    torch.manual_seed(0)
    m, ex = Chain().eval(), torch.zeros(1, 3, 32, 32)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8, block_images=torch.randn(8, 3, 32, 32))
    assert [b.name for b in al.blocks] == ["blocks.0", "blocks.1"]
    a = al.allocate(al.narrowest()["p90"] * 1.001, "importance")  # only every block gone fits
    assert a is not None and set(a.drop) == {"blocks.0", "blocks.1"}
    res = al.apply(a)
    assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)


class FourPlain(nn.Module):
    """A ReLU'd stem, four `x + f(x)` blocks, a ReLU after them: with the last block gone that ReLU fuses into the add
    before it; with every block gone it reads the stem's ReLU and runs alone (an op the table has no probe for)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbn(3, 16, s=2), nn.ReLU())
        self.blocks = nn.Sequential(*[Plain(16) for _ in range(4)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.blocks(self.stem(x))).mean((2, 3)))


def test_blocks_own_disjoint_ops_and_no_allocation_is_over_its_budget():
    """Found in review: read off the alignment alone, the last block claimed the add of the block before it (equal
    adds, the ReLU fused one op early), so sums over several dropped blocks were wrong; an allocation could come back
    over its budget, or abort the search on a network with an op no probe prices."""
    torch.manual_seed(0)
    m, ex = FourPlain().eval(), torch.zeros(1, 3, 32, 32)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.05, 1.0)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8, block_images=torch.randn(8, 3, 32, 32))
    owned = [i for b in al.blocks for i in al.block_ops[b.name]]
    assert len(owned) == len(set(owned)) == 4 * 2  # each block: its conv and its add, no op claimed twice
    assert all(al.ops[i].name.startswith(b.name + ".") or al._scopes[i] == b.name
               for b in al.blocks for i in al.block_ops[b.name])
    widths = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    for frac in (0.1, 0.3, 0.6, 0.9):
        budget = widths * (1 - frac)
        for scoring in ("importance", "uniform"):
            a = al.allocate(budget, scoring)
            if a is None:
                continue
            assert a.p90_ms <= budget, (frac, scoring, a)
            res = al.apply(a)
            assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)
            assert len(a.drop) < 4  # all four gone leaves a lone ReLU the table cannot price: never chosen
    with pytest.raises(EdgeSparseError, match="not a block that can be dropped"):
        al.price({g.name: g.size for g in al.groups}, ["stem"])


def test_a_shape_read_on_a_channels_last_tensor_costs_nothing():
    """Found in review: `x.shape` / `torch._assert` on a permuted (NHWC) tensor was refused as an op with no
    channels-last class, and `F.layer_norm(x, x.shape[-1:])` as a LayerNorm over an unknown shape."""
    from edge_sparse.latency.ops import extract_ops

    class Block(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.stem, self.dw, self.fc = nn.Conv2d(3, c, 4, 4), nn.Conv2d(c, c, 7, padding=3, groups=c), nn.Linear(c, c)

        def forward(self, x):
            x = self.stem(x)
            y = self.dw(x).permute(0, 2, 3, 1)
            torch._assert(y.shape[-1] == 16, "channels")
            y = self.fc(nn.functional.layer_norm(y, y.shape[-1:]))
            return (x + y.permute(0, 3, 1, 2)).mean((2, 3))

    kinds = [o.kind for o in extract_ops(Block().eval(), torch.zeros(1, 3, 32, 32))]
    assert kinds == ["conv", "dwconv", "layernorm", "fc", "add", "mean"], kinds


class InplaceResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(cbn(c, c), nn.ReLU(), cbn(c, c))

    def forward(self, x):
        x += self.f(x)
        return x


class InplaceSE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        return x.mul_(torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))))


def test_modules_that_write_their_input_in_place_are_judged_on_what_they_read():
    """Found in review: the input was held by reference, so `x.mul_(gate)` (an SE, 0.5 x when silenced) passed for a
    block, and `x += f(x)` for one that changes nothing (contribution 0: always dropped first)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Sequential(cbn(3, 16), nn.ReLU()), InplaceResidual(16), InplaceSE(16), Plain(16)).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
    blocks = {b.name: b.contribution for b in residual_blocks(m, torch.randn(4, 3, 16, 16))}
    assert set(blocks) == {"1", "3"}, blocks  # the SE gate is no block, however it is written
    assert blocks["1"] > 0.05, blocks


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, the other half through 1x1 / dw 3x3 / 1x1, concatenated
    and shuffled. No skip is added: silenced it is no identity, but it keeps its input's shape."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(cbn(h, h, 1), nn.ReLU(), cbn(h, h, 3, g=h), cbn(h, h, 1), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat((a, self.branch(b)), 1)
        n, c, hh, w = y.shape
        return y.view(n, 2, c // 2, hh, w).transpose(1, 2).reshape(n, c, hh, w)


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1, expand 1x1 and 3x3, concatenated; here as wide out as in."""

    def __init__(self, c, out=None):
        super().__init__()
        out = out or c
        self.squeeze = nn.Conv2d(c, out // 4, 1)
        self.e1, self.e3 = nn.Conv2d(out // 4, out // 2, 1), nn.Conv2d(out // 4, out // 2, 3, padding=1)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        return torch.cat((torch.relu(self.e1(s)), torch.relu(self.e3(s))), 1)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbn(3, 32, s=2), nn.ReLU())
        self.units = nn.Sequential(*[ShuffleUnit(32) for _ in range(3)])
        self.fire = Fire(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.fire(self.units(self.stem(x))).mean((2, 3)))


def test_a_network_without_residual_blocks_may_drop_units_that_keep_their_width():
    """ShuffleNetV2 and SqueezeNet have no residual block: at 96 px their stems and per-op costs left the narrowest
    widths 7-16 % under the dense model, short of a 1.5x budget (shufflenet_v2_x0_5, squeezenet1_1 on the host). A
    stride-1 unit keeps the shuffled stream's width (no group narrows it), so it can go whole; this fire module's
    output width is its own groups', its input the fixed stream's: dropped, it would hand its reader the wrong width
    at any narrower allocation, so it is not offered."""
    torch.manual_seed(0)
    m, ex = ShuffleNet().eval(), torch.zeros(1, 3, 32, 32)
    imgs = torch.randn(8, 3, 32, 32)
    assert residual_blocks(m, imgs) == []  # no residual block ...
    plain = residual_blocks(m, imgs, plain=True)  # ... but four modules that keep their shape
    assert [b.name for b in plain] == ["units.0", "units.1", "units.2", "fire"]
    assert not any(b.residual for b in plain) and all(b.contribution > 0 for b in plain)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8, block_images=imgs)
    assert [b.name for b in al.blocks] == ["units.0", "units.1", "units.2"]  # the fire module would break its reader
    assert {"fire.e1", "fire.e3"} <= {g.name for g in al.groups}  # (because its output width is its own groups')
    widths = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    assert al.narrowest()["p90"] < widths
    budget = (al.narrowest()["p90"] + widths) / 2
    x = torch.randn(4, 3, 32, 32)
    a = al.allocate(budget, "importance")
    assert a is not None and a.drop and set(a.drop) <= {"units.0", "units.1", "units.2"} and a.p90_ms <= budget
    res = al.apply(a)
    assert res.model(x).shape == (4, 10)
    assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)
    assert torch.allclose(replay(m, res.record, ex)(x), res.model(x), atol=1e-5)


class SqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.fires = nn.Sequential(Fire(16, 32), Fire(32), Fire(32))  # the last two as wide out as in
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.fires(self.stem(x)).mean((2, 3)))


def test_a_dropped_fire_module_ties_its_output_groups_to_the_ones_before_it():
    """SqueezeNet's fire modules that keep their shape: input and output are the expand 1x1 / 3x3 groups of two
    neighbouring modules, paired one to one. Dropped, a module's output groups keep its input groups' widths (its
    reader then reads as many channels as the module was given), however the widths fill the budget afterwards, also
    along a chain of dropped neighbours."""
    torch.manual_seed(0)
    m, ex = SqueezeNet().eval(), torch.zeros(1, 3, 32, 32)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8, block_images=torch.randn(8, 3, 32, 32))
    assert [b.name for b in al.blocks] == ["fires.1", "fires.2"] and not any(b.residual for b in al.blocks)
    assert {b: set(t) for b, t in al._ties.items()} == {"fires.1": {("fires.1.e1", "fires.0.e1"), ("fires.1.e3", "fires.0.e3")},
                                                       "fires.2": {("fires.2.e1", "fires.1.e1"), ("fires.2.e3", "fires.1.e3")}}
    widths = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    x = torch.randn(4, 3, 32, 32)
    n = al.narrowest()["p90"]
    budgets = [n * 1.0001, n + 0.2 * (widths - n), n + 0.8 * (widths - n)]  # both gone; widths fill after the drops
    drops, filled = set(), []
    for budget in budgets:
        for scoring in ("importance", "uniform"):
            a = al.allocate(budget, scoring)
            assert a is not None and a.drop and a.p90_ms <= budget, (budget, scoring, a)
            drops.add(a.drop)
            filled.append(a)
            for b in a.drop:  # the tied groups are as wide as the ones they follow
                for out, src in al._ties[b]:
                    assert a.keep[out] == a.keep[src], (a, out, src)
            res = al.apply(a)
            assert res.model(x).shape == (4, 10)  # (a reader given the wrong width raises here)
            assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)
            assert torch.allclose(replay(m, res.record, ex)(x), res.model(x), atol=1e-5)
    assert ("fires.1", "fires.2") in {tuple(sorted(d)) for d in drops}  # the chain: both gone
    # found in review: a dropped module's tied output groups counted as kept (sparsity 0 reads as "shipped dense")
    from edge_sparse.allocate import Allocation

    dense_widths = {g.name: g.size for g in al.groups}
    assert al.sparsity(Allocation("importance", dense_widths, 0.0, 0.0, ("fires.1", "fires.2"))) > 0.5
    assert {16} in [{a.keep[g] for g in ("fires.0.e1", "fires.1.e1", "fires.2.e1")} for a in filled]  # widened tied


def test_a_network_predicted_within_the_margin_is_timed_and_the_device_decides():
    """squeezenet1_1 on this host: every droppable fire module gone predicted 0.3511 ms against 0.3446 ms, the
    budget less its 5 % margin for the prediction's error (0.3628 ms whole), and the build failed untimed. Where no
    allocation is predicted under the margined budget, the ones under the whole budget are timed; a measurement
    under the whole budget ships, one over it fails with what it measured."""
    import dataclasses

    import numpy as np

    from edge_sparse.data import ImageSet, Splits
    from edge_sparse.errors import BudgetError
    from edge_sparse.search import search_allocations

    torch.manual_seed(0)
    m, ex = SqueezeNet().eval(), torch.zeros(1, 3, 32, 32)
    pr = _pricer(m, ex)
    narrowest = Allocator(m, ex, pr, 8, block_images=torch.randn(8, 3, 32, 32)).narrowest()["p90"]
    pr.margin = 0.05
    budget = narrowest / 0.98  # 2 % over the margined budget, under the whole one (ms: the rpi4 profile's absolute)
    pr.target = dataclasses.replace(pr.target, latency_budget_ms=budget, latency_budget=None, model_size_budget_kb=1 << 16)
    assert pr.effective_budget_ms < narrowest <= pr.budget_ms
    rng = np.random.default_rng(0)
    s = lambda n: ImageSet(x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    splits = Splits("noise", tuple("abcdefghij"), s(32), s(16), s(16), (0.5,) * 3, (0.25,) * 3)

    def timer(factor):
        def time_on_device(models):
            return {k: pr.predict(v, ex)["p90"] * factor for k, v in models.items()}
        return time_on_device

    chosen, res, tried = search_allocations(m, splits, pr.target, pr, log=lambda *_: None, time_on_device=timer(1.0))
    assert "@margin" in chosen.method and res.record["dropped"], chosen
    assert pr.effective_budget_ms < chosen.predicted_p90_ms <= chosen.measured_p90_ms <= pr.budget_ms
    with pytest.raises(BudgetError, match="ms on the device, over the full"):
        search_allocations(m, splits, pr.target, pr, log=lambda *_: None, time_on_device=timer(1.05))
    with pytest.raises(BudgetError, match="the narrowest allowed widths predict") as e:  # untimed: nothing decides
        search_allocations(m, splits, pr.target, pr, log=lambda *_: None)
    assert "on the device" not in str(e.value)


class Side(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.conv = cbn(c, c, k)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Sibling(nn.Module):
    """Two same-width units reading the stem, the one traced first concatenated last."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbn(3, 32, s=2), nn.ReLU())
        self.side, self.body = Side(32, 1), Side(32, 3)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        s = self.stem(x)
        a = self.side(s)
        b = self.body(s)
        return self.head(torch.cat((b, a), 1).mean((2, 3)))


def test_a_plain_block_is_tied_to_what_feeds_it_not_to_the_op_traced_before_it():
    """Found in review: the ties are read off the op order, and `body` (which reads the stem) was tied to `side`, the
    sibling traced just before it; at the narrowest widths every group is equally wide and the check passed, then an
    allocation dropping `body` with the stem wider than `side` built a network whose head got the wrong width."""
    torch.manual_seed(0)
    m, ex = Sibling().eval(), torch.zeros(1, 3, 32, 32)
    al = Allocator(m, ex, _pricer(m, ex), 8, block_images=torch.randn(8, 3, 32, 32))
    assert [b.name for b in al.blocks] == ["side"]  # side reads the stem, traced just before it: tied right
    assert al._ties["side"] == [("side.conv.0", "stem.0.0")]
    widths = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    for f in (0.3, 0.9):
        a = al.allocate(al.narrowest()["p90"] + f * (widths - al.narrowest()["p90"]), "importance")
        assert a is not None and a.drop == ("side",)
        assert al.apply(a).model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
