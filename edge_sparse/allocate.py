"""Latency-aware channel allocation: per coupled group, how many channels to keep under a latency budget.

In:  a dense (sparsity-trained) model, an example input, a `Pricer` (edge_sparse.latency.predict) and
     the channel multiple; importance per channel by the build's criterion (BatchNorm scales by default;
     weight magnitude or first-order Taylor on request).
Out: `Allocation`s (kept width per Torch-Pruning group, predicted p90) and `apply(...)`: a physically
     smaller model with the least important channels of each group removed, as a `PruneResult`
     whose record replays on the dense model (`edge_sparse.pruning.replay`).
Run: part of the build's search stage (`edge_sparse.search.search_allocations`).

The method is HALP's (Shen et al., 2022) greedy form: start from the dense widths; repeatedly remove
one channel multiple from the group whose least important remaining channels cost the least
importance per millisecond saved, by the target's latency table; stop under the budget; then add
back, most valuable first, whatever still fits, so the budget is used. Coupled channels (a residual
add ties every conv feeding it) move together: a group is Torch-Pruning's, never our own tracing.
Three scorings give the finalists the search compares after BN re-estimation: raw importance
(BN |gamma| summed over the coupled layers), importance relative to its group's mean (each group
judged against itself), and latency alone with equal width fractions (a width multiplier found by
the same table) — whichever recovers best is kept.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import extract_ops
from edge_sparse.pruning import _channel_shuffles, _tolerate_torch_pruning, bn_scale_importance, rank_group
from edge_sparse.pruning import drop_blocks, renormalized_batchnorms, residual_blocks, tied_halves
from edge_sparse.pruning import RECORD_FORMAT, Criterion, PruneResult, _classifier_layers, count, profile

SCORINGS = ("importance", "relative", "uniform")


@dataclass
class Group:
    name: str  # the root module (its output channels)
    size: int  # dense channels
    order: list  # channel indices, least important first
    importance: list  # importance of each channel, in `order`
    min_keep: int
    step: int  # channels removed or given back at a time: the channel multiple, or whole positions of a grouped conv


@dataclass
class Allocation:
    scoring: str
    keep: dict  # group name -> channels kept
    p90_ms: float
    p50_ms: float
    drop: tuple = ()  # residual blocks removed whole (only where the narrowest widths alone miss the budget)

    def describe(self) -> str:
        return (f"{self.scoring}: p90 {self.p90_ms:.4f} ms, widths " + ", ".join(f"{k}={v}" for k, v in self.keep.items())
                + (f"; blocks dropped: {', '.join(self.drop)}" if self.drop else ""))


class Allocator:
    def __init__(self, dense: nn.Module, example: torch.Tensor, pricer, round_to: int, max_layer_sparsity: float = 0.9,
                 taylor_batch=None, criterion: str = "bn_scale", block_images: Optional[torch.Tensor] = None):
        """Channels are ranked by `criterion`: "bn_scale" (BN |gamma|, what the sparsity objective drives to zero),
        "l1" / "l2" (the group's weight magnitude, Torch-Pruning's `GroupMagnitudeImportance`), or "taylor"
        (first-order Taylor importance |weight x gradient| on `taylor_batch=(images, labels)`, data-driven: for
        weights not trained with the sparsity objective). Raw scores, no per-group normaliser: groups compete on one
        scale (for l1 / l2 that scale grows with a group's fan-in and ignores the BN scale behind it; the finalists
        are ranked by accuracy after BN re-estimation, which is what decides).

        `block_images` (real images, normalised): the residual blocks that can be dropped whole are found on them
        (`pruning.residual_blocks`) and ranked by how much each changes its input; an allocation drops blocks only
        where every group at its narrowest width still misses the budget (depth costs accuracy more than width:
        a stride-2 stem, a 3x3 conv at few channels or a grouped conv's per-group cost do not shrink with width)."""
        import torch_pruning as tp

        self.dense, self.example, self.pricer, self.m = dense.eval(), example[:1], pricer, int(round_to)
        self._scopes: list[str] = []  # each op's module (`extract_ops`): a block's ops are those inside it
        self.ops = extract_ops(self.dense, self.example, self._scopes)
        ignored = _classifier_layers(self.dense, self.example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _tolerate_torch_pruning()  # the same tolerance prune() has (shuffle networks)
            dg = tp.DependencyGraph().build_dependency(self.dense, self.example)
            groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
        names = {mod: n for n, mod in self.dense.named_modules()}
        _, shuffled = _channel_shuffles(self.dense, self.example)
        if shuffled:  # as in prune(): a shuffle's sides are kept whole (Torch-Pruning does not follow its permutation)
            groups = [g for g in groups if not {(names.get(d.target.module), bool(dg.is_out_channel_pruning_fn(d.handler)))
                                                for d, _ in g} & shuffled]
        if criterion not in Criterion.__args__:
            raise EdgeSparseError(f"unknown criterion {criterion!r}; valid: {', '.join(Criterion.__args__)}")
        if (criterion == "taylor") != (taylor_batch is not None):
            raise EdgeSparseError("criterion 'taylor' needs a batch of images and labels (taylor_batch), and only it "
                                  f"uses one (criterion {criterion!r}, taylor_batch {'given' if taylor_batch else 'none'})")
        # raw |gamma|: groups compete on one scale; BatchNorms that a depthwise conv's BatchNorm re-normalises are not read
        imp_fn = bn_scale_importance(renormalized_batchnorms(self.dense, self.example), normalizer=None, fallback=False)
        self.criterion = "bn_scale"
        if criterion in ("l1", "l2"):
            imp_fn = tp.importance.GroupMagnitudeImportance(p=int(criterion[1]), normalizer=None)
            self.criterion = criterion
        if taylor_batch is not None:
            x, y = taylor_batch
            self.dense.zero_grad()
            nn.functional.cross_entropy(self.dense(x), y).backward()
            imp_fn = tp.importance.GroupTaylorImportance(normalizer=None)
            self.criterion = "taylor"
        self.groups: list[Group] = []
        self.handlers = {}
        self.unprunable: list[dict] = []  # groups kept whole, with why (as `pruning.prune` lists them)
        for g in groups:
            root = g[0].dep.target.module
            n = len(g[0].idxs)
            if n <= self.m:
                continue
            imp, why = rank_group(g, imp_fn)
            if why:
                self.unprunable.append({
                    "layers": list(dict.fromkeys(names[d.target.module] for d, _ in g if d.target.module in names
                                                 and isinstance(d.target.module, (nn.Conv2d, nn.Linear)))),
                    "why": why})
                continue
            if imp is None:  # no BN in the group: fall back to the L1 norm of the root's filters
                imp = root.weight.detach().abs().flatten(1).sum(1)
            imp = imp.detach().float()
            slices, step = _conv_groups(g, self.m)
            order = _channel_order(imp, slices)  # `_conv_groups`' step is a multiple of `slices`
            if n <= step:
                continue
            min_keep = max(step, int(math.ceil(n * (1 - max_layer_sparsity) / step)) * step)
            name = names[root]
            self.groups.append(Group(name, n, order, [float(imp[i]) for i in order], min(n, min_keep), step))
            self.handlers[name] = g[0].dep.handler
        for p in self.dense.parameters():
            p.grad = None
        if not self.groups:
            raise EdgeSparseError("no prunable channel group wider than the channel multiple "
                                  f"{self.m}: nothing to allocate")
        self._map_ops()
        if not self.groups:
            raise EdgeSparseError("Torch-Pruning cannot prune any channel group of this model: "
                                  + "; ".join(f"{u['layers'][0]}: {u['why']}" for u in self.unprunable[:3]))
        self._sizes = {g.name: g.size for g in self.groups}
        # the ops each group reads or writes: all a trial of that group's width moves (`_p90_moved`)
        self._touch = {g.name: [i for i, (ci, co) in enumerate(zip(self.cin_of, self.cout_of)) if g.name in ci
                                or g.name in co] for g in self.groups}
        self._dropped: set[int] = set()  # ops of the blocks an allocation in progress has dropped: priced at 0
        self._block_images, self._blocks = block_images, None
        self.block_ops: dict[str, list[int]] = {}  # block -> its ops' indices in `self.ops`
        self._inside: dict[str, Optional[str]] = {}  # group -> the block all its ops lie in (it goes with the block)
        self._ties: dict[str, list[tuple[str, str]]] = {}  # plain block -> (output group, input group it follows)

    @property
    def blocks(self) -> list:
        """The residual blocks that can be dropped whole, found on `block_images` the first time they are needed (an
        allocation the widths alone meet never looks for them)."""
        if self._blocks is None:
            found = []
            imgs = self._block_images
            for b in residual_blocks(self.dense, imgs, plain=True) if imgs is not None else []:
                ops = self._ops_of_block(b.name)
                ties = [] if b.residual or not ops else self._width_ties(ops)
                if ops and ties is not None:
                    found.append(b)
                    self.block_ops[b.name] = ops
                    self._ties[b.name] = ties
            # the ties are read off the op order, where a sibling branch traced between a plain block and what feeds
            # it would tie it to the wrong group: each is dropped alone from a network whose groups are all at
            # different widths (a wrong tie hands its reader the wrong width), then all together at the narrowest
            uneven = self._uneven()
            found = [b for b in found if b.residual or self._runs_without([b.name], uneven)]
            plain = [b.name for b in found if not b.residual]
            if plain and not self._runs_without(plain, {g.name: g.min_keep for g in self.groups}):
                found = [b for b in found if b.residual]
            # a group all of whose ops lie inside a block goes with it (a residual stream through it does not)
            self._inside = {g.name: next((b.name for b in found
                                          if set(self._touch[g.name]) <= set(self.block_ops[b.name])), None)
                            for g in self.groups}
            self._blocks = found  # (set last: a failure above leaves the blocks to be looked for again)
        return self._blocks

    @property
    def blocks_known(self) -> bool:
        """Whether the blocks have been looked for (`blocks` looks on first use)."""
        return self._blocks is not None

    def _uneven(self) -> dict:
        """A width per group, each group (of those that can) at a width no other group has."""
        keep, used = {}, set()
        for g in self.groups:
            widths = range(g.size // g.step * g.step, g.min_keep - 1, -g.step)
            keep[g.name] = next((w for w in widths if w not in used), g.min_keep)
            used.add(keep[g.name])
        return keep

    def _runs_without(self, drop: list[str], keep: dict) -> bool:
        """Whether the network `keep` builds without the blocks `drop` runs (a reader given the wrong width raises)."""
        try:
            model = self._pruned(keep, drop)
            with torch.no_grad():
                model(self.example)
        except (RuntimeError, ValueError, IndexError, EdgeSparseError):  # a width mismatch, however it is raised
            return False
        return True

    def _width_ties(self, ops: list[int]) -> Optional[list[tuple[str, str]]]:
        """How a plain block (no skip) with these ops can hand on as many channels as it is given at every allocation:
        [] where the op before it and its own last op write widths that move with the same groups by the same
        amounts (a stride-1 ShuffleNet unit: the shuffled stream, which no group narrows); else the pairs (its output
        group, the input group it must then keep as wide as), where its input and output widths are sums of groups
        that pair one to one (a fire module: its expand 1x1 / 3x3 groups with the ones of the fire module before
        it); None where they do not pair (dropped, it would hand its reader the wrong width). A residual block's
        add ties the two sides itself."""
        before, last = min(ops) - 1, max(ops)
        if before < 0 or self.ops[before].cout != self.ops[last].cout:
            return None
        a, b = self.cout_of[before], self.cout_of[last]
        if any(a[g] != b[g] for g in set(a) & set(b)):
            return None
        ins, outs = [g for g in a if g not in b], [g for g in b if g not in a]
        by = {g.name: g for g in self.groups}
        if len(ins) != len(outs) or any(
                a[i] != b[o] or (by[i].size, by[i].step, by[i].min_keep) != (by[o].size, by[o].step, by[o].min_keep)
                for i, o in zip(ins, outs)):
            return None
        return list(zip(outs, ins))

    def _tie_roots(self, drop) -> dict[str, str]:
        """Output group -> the untied group it keeps as wide as, over the dropped plain blocks `drop` (a chain of
        dropped neighbours followed to its end)."""
        ties = dict(p for b in drop for p in self._ties.get(b, ()))
        roots = {}
        for out, src in ties.items():
            for _ in range(len(ties)):  # bounded: a chain is at most every tie long
                if src not in ties:
                    break
                src = ties[src]
            roots[out] = src
        return roots

    def _tied(self, keep: dict, drop) -> dict:
        """`keep` with each dropped plain block's output groups as wide as the input groups they are tied to."""
        roots = self._tie_roots(drop)
        return {g: keep[roots[g]] if g in roots else k for g, k in keep.items()}

    def _ops_of_block(self, name: str) -> list[int]:
        """Indices in `self.ops` of the ops that go when block `name` is dropped: those computed inside it, where the
        model without it has the same ops before and after it (modules matched by name, functions by shape) and as
        many of them go; [] where that does not hold. (Read off the alignment alone, two neighbouring blocks could
        claim one op: a ReLU after the last block fuses into the one before once it is gone, and equal adds then
        align one op early. Blocks do not nest, so ops by module are each in one block at most.)"""
        mods = set(dict(self.dense.named_modules()))

        def ident(o) -> tuple:
            return o.key, (o.name if o.name.removesuffix(".pad") in mods else "")

        try:
            rest = [ident(o) for o in extract_ops(drop_blocks(copy.deepcopy(self.dense), [name]), self.example)]
        except EdgeSparseError:
            return []
        full = [ident(o) for o in self.ops]
        p = 0
        while p < len(rest) and full[p] == rest[p]:
            p += 1
        q = 0
        while q < len(rest) - p and full[-1 - q] == rest[-1 - q]:
            q += 1
        gone = list(range(p, len(full) - q))
        if p + q != len(rest) or not gone or any(
                full[i][1] and not full[i][1].startswith(name + ".") for i in gone):
            return []
        inside = [i for i, sc in enumerate(self._scopes) if sc == name or sc.startswith(name + ".")]
        return inside if len(inside) == len(gone) else []

    # how each group moves each op's input and output width: prune each group by one multiple and look. A width is
    # linear in the groups' widths: a concat's consumer reads the sum of its inputs' groups, a flatten's FC reads
    # H*W features per channel (taking the last group that moved it under-priced SqueezeNet's fire modules ~7x)
    def _map_ops(self) -> None:
        self.cin_of: list[dict[str, float]] = [{} for _ in self.ops]
        self.cout_of: list[dict[str, float]] = [{} for _ in self.ops]
        for g in list(self.groups):
            why = None
            try:
                m = self._pruned({g.name: g.size - g.step})
                root = dict(m.named_modules())[g.name]
                width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
                if width != g.size - g.step:  # Torch-Pruning mapped the indices wrongly (GhostNet's stem: to 0)
                    why = f"pruning {g.step} of its {g.size} channels left {g.name} {width} wide"
                else:
                    ops = extract_ops(m, self.example)
            except (EdgeSparseError, IndexError, RuntimeError) as e:
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            if why is not None:  # kept whole and listed, as `pruning.prune` keeps the groups it cannot map
                self.unprunable.append({"layers": [g.name], "why": f"Torch-Pruning cannot prune this group: {why}"})
                self.groups.remove(g)
                self.handlers.pop(g.name, None)
                continue
            if len(ops) != len(self.ops):
                raise EdgeSparseError(f"pruning group {g.name} changed the op graph ({len(self.ops)} -> {len(ops)} ops)")
            for i, (a, b) in enumerate(zip(self.ops, ops)):
                if a.cin != b.cin:
                    self.cin_of[i][g.name] = (a.cin - b.cin) / g.step
                if a.cout != b.cout:
                    self.cout_of[i][g.name] = (a.cout - b.cout) / g.step

    def _pruned(self, keep: dict, drop=()) -> nn.Module:
        """A copy of the dense model keeping, per group, its `keep[name]` most important channels, then without the
        blocks in `drop` (dropped after the pruning: a group rooted inside a block may run through the rest)."""
        import torch_pruning as tp

        keep = self._tied(keep, drop)
        model = copy.deepcopy(self.dense).eval()
        named = dict(model.named_modules())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _tolerate_torch_pruning()
            dg = tp.DependencyGraph().build_dependency(model, self.example)
            for g in self.groups:
                k = keep.get(g.name, g.size)
                if k < g.size:
                    idxs = sorted(g.order[: g.size - k])
                    dg.get_pruning_group(named[g.name], self.handlers[g.name], idxs).prune()
        drop_blocks(model, drop)
        model._edge_sparse_dg = dg  # noqa: SLF001 - kept for the replay record, dropped by `apply`
        return model

    def _widths(self, i: int, keep: dict) -> tuple[int, int]:
        """Op i's input and output width when each group keeps `keep[name]` channels."""
        def width(w: int, per: dict[str, float]) -> int:
            return int(round(w - sum((self._sizes[g] - keep[g]) * d for g, d in per.items())))

        return width(self.ops[i].cin, self.cin_of[i]), width(self.ops[i].cout, self.cout_of[i])

    def ops_for(self, keep: dict):
        ops = []
        for i, op in enumerate(self.ops):
            cin, cout = self._widths(i, keep)
            ops.append(op.replace(cin=cin, cout=cout))
        return ops

    def price(self, keep: dict, drop=()) -> dict:
        """The predicted price of `keep` with the blocks in `drop` gone, as the sum of the ops each leaves (each block's
        ops found alone: `built_price` prices the network itself)."""
        if drop:
            unknown = sorted(set(drop) - {b.name for b in self.blocks})
            if unknown:
                raise EdgeSparseError(f"not a block that can be dropped: {', '.join(unknown)} (blocks: "
                                      f"{', '.join(b.name for b in self.blocks) or 'none'})")
        gone = {i for b in drop for i in self.block_ops[b]}
        return self.pricer.predict_ops([o for i, o in enumerate(self.ops_for(self._tied(keep, drop))) if i not in gone])

    def built_price(self, keep: dict, drop=()) -> dict:
        """The price of the network `keep` and `drop` build, traced again: without two neighbouring blocks, an
        activation may fuse into another op or run alone, which `price`'s sum of ops cannot see. Where that leaves an
        op the latency table has no probe for, the sum stands in."""
        if not drop:
            return self.price(keep)
        return self._built(keep, drop) or self.price(keep, drop)

    def _built(self, keep: dict, drop) -> Optional[dict]:
        """The price of the network `keep` and `drop` build; None where it has an op the pricer has no price for."""
        try:
            return self.pricer.predict_ops(extract_ops(self._pruned(keep, drop), self.example))
        except EdgeSparseError:
            return None

    def narrowest(self) -> dict:
        """The price of the fastest network the allocator can make: every group at its narrowest, every block dropped."""
        return self.built_price({g.name: g.min_keep for g in self.groups}, [b.name for b in self.blocks])

    # The greedy loops below price one trial per group per step: whole-model pricing made that O(steps x groups x
    # ops) (densenet121: 2.7 M op prices, 180 s per scoring). A model's cost is its ops' costs plus fixed terms
    # (`Pricer.op_ms`, `Pricer.total`), and a group moves only the ops that read or write it, so a trial re-prices
    # those ops alone, each width pair priced once.
    def _cost(self, i: int, keep: dict) -> float:
        if i in self._dropped:
            return 0.0
        k = (i, *self._widths(i, keep))
        ms = self._op_cost.get(k)
        if ms is None:
            ms = self._op_cost[k] = self.pricer.op_ms(self.ops[i].replace(cin=k[1], cout=k[2]))
        return ms

    def _state(self, keep: dict) -> list[float]:
        """Each op's cost at `keep`; the per-width costs are read afresh (the pricer may have been re-priced since)."""
        self._op_cost: dict[tuple[int, int, int], float] = {}
        return [self._cost(i, keep) for i in range(len(self.ops))]

    def _p90_moved(self, per: list[float], total: float, keep: dict, groups) -> tuple[float, dict]:
        """p90 (rounded as `price` rounds it) of `keep`, which differs from the state `per` (summing to `total`) in
        `groups` alone (a group and those tied to it); and the costs of the ops they moved."""
        moved = {i: self._cost(i, keep) for g in groups for i in self._touch[g]}
        t = total + sum(ms - per[i] for i, ms in moved.items())
        return round(self.pricer.total(t)[1], 5), moved

    def allocate(self, budget_ms: float, scoring: str = "importance") -> Optional[Allocation]:
        """Greedy removal under `budget_ms` (predicted p90), then add-back to fill it; None if unreachable."""
        if scoring not in SCORINGS:
            raise EdgeSparseError(f"unknown allocation scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
        keep = {g.name: g.size for g in self.groups}
        by = {g.name: g for g in self.groups}
        # a group's width first snaps down to its step, so every kept width is kernel-friendly
        for g in self.groups:
            keep[g.name] = max(g.min_keep, g.size // g.step * g.step)

        def chunk_cost(g: Group, lo: int, hi: int) -> float:
            """Importance of the channels ranked lo..hi-1 from the least important (removed first)."""
            vals = g.importance[lo:hi]
            if scoring == "importance":
                return sum(vals)
            mean = sum(g.importance) / len(g.importance) or 1.0
            if scoring == "relative":
                return sum(vals) / mean
            return (hi - lo) / g.size  # uniform: every group's channels cost the same fraction

        self._dropped = set()
        drop: list[str] = []
        unpriceable: set[str] = set()
        per = self._state(keep)
        total = sum(per)
        p90 = round(self.pricer.total(total)[1], 5)

        follow: dict[str, list[str]] = {}  # group -> the groups tied to it by a dropped plain block (they move with it)

        def live(g: Group) -> bool:  # not inside a dropped block, nor tied to another group
            return self._inside.get(g.name) not in drop and g.name not in tied

        def tie_up() -> float:
            """The groups tied by the blocks dropped so far, set to their roots' widths (equal already: blocks go
            only with every group at its narrowest); the new total."""
            roots = self._tie_roots(drop)
            tied.clear()
            tied.update(roots)
            follow.clear()
            for out, src in roots.items():
                follow.setdefault(src, []).append(out)
                keep[out] = keep[src]
            return commit({i: self._cost(i, keep) for g in tied for i in self._touch[g]})

        def step(g: Group, d: int) -> list[str]:
            """Move group g by d channels, with the groups tied to it; the groups moved."""
            keep[g.name] += d
            for f in follow.get(g.name, ()):
                keep[f] = keep[g.name]
            return [g.name, *follow.get(g.name, ())]

        tied: set[str] = set()

        def commit(moved: dict) -> float:
            for i, ms in moved.items():
                per[i] = ms
            return sum(per)  # summed afresh: no drift from adding differences step after step

        def narrow_once() -> bool:
            """One step narrower: the chunk costing least per ms saved, or, every group at its narrowest, the block
            that changes its input least per ms; False when nothing is left to remove."""
            nonlocal p90, total
            best = None
            for g in self.groups:
                k = keep[g.name]
                if k - g.step < g.min_keep or not live(g):
                    continue
                moving = step(g, -g.step)  # the trial, undone below
                t90, moved = self._p90_moved(per, total, keep, moving)
                step(g, g.step)
                saved = p90 - t90
                cost = chunk_cost(g, g.size - k, g.size - k + g.step)
                score = cost / saved if saved > 1e-9 else float("inf")
                if scoring == "uniform":  # the group furthest above the others' kept fraction goes first
                    score = -(k / g.size) + (0 if saved > 1e-9 else 1e3)
                if best is None or score < best[0]:
                    best = (score, g.name, t90, moved)
            if best is None:  # every group at its narrowest: drop the block that changes its input least per ms
                while True:  # ... of those whose network the pricer can price (an op alone it has no probe for)
                    b = self._drop_one(drop, per, total, p90, unpriceable)
                    if b is None:
                        return False
                    if self._built(keep, drop + [b]) is not None:
                        break
                    unpriceable.add(b)
                drop.append(b)
                self._dropped.update(self.block_ops[b])
                commit({i: 0.0 for i in self.block_ops[b]})
                total = tie_up()
                p90 = round(self.pricer.total(total)[1], 5)
                return True
            step(by[best[1]], -by[best[1]].step)
            p90, total = best[2], commit(best[3])
            return True

        while p90 > budget_ms:
            if not narrow_once():
                self._dropped = set()
                return None
        # fill: give back the most valuable removed chunk that still fits, until none does
        while True:
            best = None
            for g in self.groups:
                k = keep[g.name]
                if k + g.step > g.size or not live(g):
                    continue
                moving = step(g, g.step)
                t90, moved = self._p90_moved(per, total, keep, moving)
                step(g, -g.step)
                if t90 > budget_ms:
                    continue
                gain = chunk_cost(g, g.size - k - g.step, g.size - k)
                extra = max(t90 - p90, 1e-9)
                score = gain / extra if scoring != "uniform" else -(k / g.size)
                if best is None or score > best[0]:
                    best = (score, g.name, t90, moved)
            if best is None:
                break
            step(by[best[1]], by[best[1]].step)
            p90, total = best[2], commit(best[3])
        # each block's ops were found alone; with neighbours gone an activation may fuse elsewhere or run alone: price
        # the network itself, and narrow on while that misses the budget (bounded: every step removes something)
        r = self.built_price(keep, tuple(drop))
        while r["p90"] > budget_ms:
            if not narrow_once():
                self._dropped = set()
                return None
            r = self.built_price(keep, tuple(drop))
        self._dropped = set()
        return Allocation(scoring, {g: keep[g] for g in by}, r["p90"], r["p50"], tuple(drop))

    def _drop_one(self, drop: list, per: list, total: float, p90: float, skip=()) -> Optional[str]:
        """The block whose removal costs the least contribution per ms saved at the current widths; None if none."""
        best = None
        for b in self.blocks:
            if b.name in drop or b.name in skip:
                continue
            saved = p90 - round(self.pricer.total(total - sum(per[i] for i in self.block_ops[b.name]))[1], 5)
            if saved <= 1e-9:
                continue
            score = b.contribution / saved
            if best is None or score < best[0]:
                best = (score, b.name)
        return best[1] if best else None

    def apply(self, alloc: Allocation) -> PruneResult:
        model = self._pruned(alloc.keep, alloc.drop)
        dg = model.__dict__.pop("_edge_sparse_dg")
        history = [[n, bool(out), [int(i) for i in idx]] for n, out, idx in dg.pruning_history()]
        params, macs = count(model, self.example)
        dense_params, dense_macs = count(self.dense, self.example)
        layers = profile(model, self.example)
        record = {"format": RECORD_FORMAT, "criterion": self.criterion, "method": f"allocate/{alloc.scoring}",
                  "sparsity": self.sparsity(alloc), "round_to": self.m, "global_pruning": False,
                  "input_shape": list(self.example.shape[1:]), "iterative_steps": 1, "history": history,
                  "plan": [alloc.describe()], "keep": alloc.keep, "unprunable": self.unprunable,
                  "dropped": list(alloc.drop),
                  "channels": {s.name: [s.in_channels, s.out_channels] for s in layers}}
        return PruneResult(model.eval(), params, macs, dense_params, dense_macs, record, 0.0, layers,
                           profile(self.dense, self.example))

    def sparsity(self, alloc: Allocation) -> float:
        """The fraction of the groups' channels removed (a dropped block's groups count as removed)."""
        if alloc.drop:
            self.blocks  # noqa: B018 - the blocks (and the groups inside them) are looked for on first use
        total = sum(g.size for g in self.groups)
        tied = set(self._tie_roots(alloc.drop))  # a dropped plain block's output groups: gone with it
        kept = sum(k for n, k in alloc.keep.items() if self._inside.get(n) not in alloc.drop and n not in tied)
        return round(1 - kept / total, 4)


def _conv_groups(group, multiple: int) -> tuple[int, int]:
    """How many equal slices of this Torch-Pruning group's channels narrow at the same positions (1: none), and the
    step the group's width moves in so that every layer in it stays on the channel grid.

    - A grouped (not depthwise) conv or GroupNorm: its `groups`, as Torch-Pruning's own pruners count them; step
      lcm(multiple, groups), the grid the latency table probes a grouped conv on.
    - A layer narrower than the group's root: a concat of a layer's output with a depthwise conv of that output
      (GhostNet's ghost module) gives the root channels j and j + C/2 one source channel, so they go together
      (removing one alone left the concat's halves unequal); k = C / the narrow width slices, step k x multiple so
      the narrow layer moves by whole multiples."""
    g, step, n = 1, multiple, len(group[0].idxs)
    for dep, _ in group:
        mod = dep.target.module
        if isinstance(mod, nn.Conv2d) and 1 < mod.groups != mod.out_channels:
            g, step = math.lcm(g, mod.groups), math.lcm(step, mod.groups)
        elif isinstance(mod, nn.GroupNorm):
            g, step = math.lcm(g, mod.num_groups), math.lcm(step, mod.num_groups)
    k = tied_halves(group)
    if k > 1:
        g, step = math.lcm(g, k), math.lcm(step, k * multiple)
    return (g, step) if n % g == 0 else (1, multiple)


def _channel_order(imp: torch.Tensor, slices: int) -> list:
    """Channel indices, least important first.

    Where `slices` equal slices of the channels must narrow together (`_conv_groups`: a grouped conv's groups, a
    ghost module's halves), channels go the same positions of every slice at once, ranked by the position's mean
    importance over the slices, as Torch-Pruning's pruners rank a grouped conv's; removing whole steps (a multiple
    of `slices`) leaves every slice equally wide. Other groups go by single channels."""
    n = len(imp)
    if slices <= 1 or n % slices:
        return torch.argsort(imp).tolist()
    per = n // slices
    positions = torch.argsort(imp.view(slices, per).mean(0)).tolist()
    return [p + s * per for p in positions for s in range(slices)]
