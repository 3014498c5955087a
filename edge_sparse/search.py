"""Budget-driven search: the most accurate shrunk model whose predicted p90 fits the target.

Two ways to get candidates, both priced by the target's `Pricer` (a measured latency table, or the
published-figure estimate less its error margin):
- `search_allocations` (the default): per-group widths chosen under the budget by
  `edge_sparse.allocate` (importance per millisecond, filled up to the budget), three scorings as
  finalists, ranked by validation accuracy after BN re-estimation;
- `search` (`--search global`, and the study's fixed sparsities): one global importance threshold
  per candidate sparsity, the method before per-layer allocation.

In:  the dense (sparsity-trained) model, the validation split, a `Target`, candidate sparsities.
Out: every candidate tried (sparsity, MACs, params, predicted p90, estimated size, validation
     accuracy right after pruning) and the chosen one; `BudgetError` listing the best candidates when
     none fits (never a bundle that silently misses its budget).
Run: part of `make build`; `edge-sparse build --until search` stops after it.

Each candidate is pruned with the target's channel multiple (`round_to`), so the predicted latency is
that of the widths the device's kernels will really run. Accuracy right after pruning ranks candidates
(network slimming has already pushed the pruned channels' scales to ~0, so it tracks the fine-tuned
accuracy); only the chosen candidate is fine-tuned, which keeps the default build within minutes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import torch

from edge_sparse.data import Splits, to_tensor
from edge_sparse.errors import BudgetError, EdgeSparseError
from edge_sparse.models import load_state
from edge_sparse.pruning import PruneResult, prune
from edge_sparse.targets import Target
from edge_sparse.train import accuracy, recalibrate_bn


@dataclass(frozen=True)
class Candidate:
    sparsity: float  # fraction of prunable channels removed
    macs: int
    params: int
    layers: int  # conv/linear ops
    predicted_p90_ms: float  # on the target, by its latency model
    est_size_kb: float  # int8 .tflite size estimate
    val_acc_pruned: float  # validation top-1 right after pruning (BN re-estimated if that helps), percent
    fits_latency: bool
    fits_size: bool
    method: str = "global"  # "global" (one threshold) or "allocate/<scoring>"
    predicted_p50_ms: float = 0.0
    measured_p90_ms: Optional[float] = None  # on the target device itself (make build DEVICE=...), when timed there

    @property
    def fits(self) -> bool:
        return self.fits_latency and self.fits_size


def estimate_size_kb(params: int, channels: int) -> float:
    """int8 weights, int32 biases and per-channel scales/zero-points, plus ~4 KiB of graph."""
    return round((params + 12 * channels) / 1024 + 4.0, 2)


def evaluate_candidate(dense: torch.nn.Module, splits: Splits, target: Target, sparsity: float, criterion: str,
                       example: torch.Tensor, pricer=None, pruned: Optional[PruneResult] = None,
                       method: str = "global", taylor_batch=None,
                       device: Optional[str] = None) -> tuple[Candidate, Optional[PruneResult]]:
    if pricer is None:
        from edge_sparse.latency.predict import resolve

        pricer = resolve(target, dense, example)
    if pruned is not None:
        res = pruned
        layers, params, macs, model = res.layers, res.params, res.macs, res.model
    elif sparsity == 0:
        from edge_sparse.pruning import count, profile
        layers = profile(dense, example)
        params, macs = count(dense, example)
        model, res = dense, None
    else:
        check = to_tensor(splits.val.images(range(min(16, len(splits.val)))), splits.mean, splits.std)
        res = prune(dense, example, sparsity=sparsity, criterion=criterion, round_to=target.channel_multiple,
                    taylor_batch=taylor_batch, check_batch=check)
        layers, params, macs, model = res.layers, res.params, res.macs, res.model
    lat = pricer.predict(model, example)
    pred = round(lat["p90"], 5)
    size = estimate_size_kb(params, sum(l.out_channels for l in layers))
    acc = accuracy(model, splits.val, splits.mean, splits.std, device=device)
    if res is not None:  # re-estimate BN statistics for the new widths; keep them only where that helps
        saved = {k: v.clone() for k, v in res.model.state_dict().items()}
        recalibrate_bn(res.model, splits.train, splits.mean, splits.std, device=device)
        recal = accuracy(res.model, splits.val, splits.mean, splits.std, device=device)
        if recal > acc:
            acc = recal
        else:
            load_state(res.model, saved)
    c = Candidate(float(sparsity), int(macs), int(params), len(layers), pred, size, round(acc, 3),
                  pred <= pricer.effective_budget_ms, size <= target.model_size_budget_kb, method,
                  round(lat["p50"], 5))
    return c, res


def describe(c: Candidate) -> str:
    return (f"{c.method} sparsity {c.sparsity:.2f}: p90 {c.predicted_p90_ms:.4f} ms, {c.est_size_kb:.0f} KiB, "
            f"{c.macs / 1e6:.2f} M MACs, val acc {c.val_acc_pruned:.2f}% (before fine-tune)")


def search(dense: torch.nn.Module, splits: Splits, target: Target, sparsities: Sequence[float], criterion: str,
           log=print, fixed: Optional[float] = None, pricer=None,
           taylor_batch=None, device: Optional[str] = None) -> tuple[Candidate, Optional[PruneResult], list[Candidate]]:
    """Try every candidate sparsity (plus 0: the dense model); pick the most accurate one that fits.
    `taylor_batch=(images, labels)`: the batch whose loss gradient ranks channels when `criterion` is "taylor".

    With `fixed`, only that sparsity (and the dense reference) is evaluated and it is chosen whether
    or not it fits (the study's sweep points); its fit is still reported.
    """
    if fixed is not None:
        sparsities = [fixed]
    if not sparsities:
        raise EdgeSparseError("the sparsity search needs at least one candidate sparsity")
    for s in sparsities:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise EdgeSparseError(f"candidate sparsity {s!r} is outside [0, 1); 1 would remove every channel")
    example = torch.zeros(1, *splits.input_shape)
    if pricer is None:
        from edge_sparse.latency.predict import resolve

        pricer = resolve(target, dense, example, log=log)
    tried: list[tuple[Candidate, Optional[PruneResult]]] = []
    for s in sorted({0.0, *map(float, sparsities)}):
        c, res = evaluate_candidate(dense, splits, target, s, criterion, example, pricer, taylor_batch=taylor_batch,
                                    device=device)
        mark = "fits" if c.fits else ("over latency" if not c.fits_latency else "over size")
        log(f"  candidate {describe(c)} -> {mark}")
        tried.append((c, res))
    if fixed is not None:
        c, res = next(t for t in tried if t[0].sparsity == float(fixed))
        return c, res, [c for c, _ in tried]
    feasible = [t for t in tried if t[0].fits]
    if not feasible:
        best = sorted(tried, key=lambda t: t[0].predicted_p90_ms)[:3]
        lines = "; ".join(describe(c) for c, _ in best)
        raise BudgetError(
            f"no candidate meets target {target.name!r} (p90 <= {pricer.effective_budget_ms:.4g} ms, size <= "
            f"{target.model_size_budget_kb} KiB); fastest tried: {lines}. Try higher sparsities "
            f"(--sparsities), a smaller --model, or a larger budget in {target.path}"
        )
    chosen, res = max(feasible, key=lambda t: (t[0].val_acc_pruned, -t[0].predicted_p90_ms))
    return chosen, res, [c for c, _ in tried]


def search_allocations(dense: torch.nn.Module, splits: Splits, target: Target, pricer, log=print,
                       max_layer_sparsity: float = 0.9, time_on_device=None,
                       taylor_batch=None, criterion: str = "bn_scale",
                       device: Optional[str] = None) -> tuple[Candidate, Optional[PruneResult], list[Candidate]]:
    """Per-group widths under the budget (three scorings), ranked by accuracy after BN re-estimation.

    `time_on_device(models: dict[name, nn.Module]) -> dict[name, p90 ms]` (for a relative budget, scaled to the
    table's dense p90 by the dense model timed beside them), when given, times the finalists on
    the device itself: one that measures over the budget there does not fit, whatever the table said.
    """
    from edge_sparse.allocate import SCORINGS, Allocator

    example = torch.zeros(1, *splits.input_shape)
    budget = pricer.effective_budget_ms
    dense_c, _ = evaluate_candidate(dense, splits, target, 0.0, "bn_scale", example, pricer, method="dense", device=device)
    log(f"  candidate {describe(dense_c)} -> {'fits' if dense_c.fits else 'over budget'}")
    if dense_c.fits:
        log("  the dense model already meets the budget: shipping it unpruned")
        return dense_c, None, [dense_c]
    # the blocks that may be dropped whole (residual blocks; where there are none, units that keep their width) are
    # found and ranked on 16 training images (each candidate's input and output are held: at 224 px on a ConvNeXt,
    # ~1 GB)
    blocks_on = to_tensor(splits.train.images(range(min(16, len(splits.train)))), splits.mean, splits.std)
    al = Allocator(dense, example, pricer, target.channel_multiple, max_layer_sparsity=max_layer_sparsity,
                   taylor_batch=taylor_batch, criterion=criterion, block_images=blocks_on)
    narrowest = al.price({g.name: g.min_keep for g in al.groups})  # the fastest network of these depths
    if narrowest["p90"] > budget and al.blocks:  # then blocks may go whole
        kind = "residual blocks" if al.blocks[0].residual else "units that keep their width (no residual block)"
        log(f"  depth: the narrowest widths predict {narrowest['p90']:.4g} ms, over the budget; {len(al.blocks)} "
            f"{kind} can be dropped whole ({', '.join(b.name for b in al.blocks[:4])}"
            f"{', ...' if len(al.blocks) > 4 else ''})")
    tried: list[tuple[Candidate, Optional[PruneResult]]] = [(dense_c, None)]
    seen: set = set()

    def allocate_round(b: float, tag: str) -> list[int]:
        new = []
        for scoring in SCORINGS:
            a = al.allocate(b, scoring)
            if a is None:
                continue
            key = (tuple(sorted(a.keep.items())), a.drop)
            if key in seen:
                log(f"  allocation {scoring}{tag}: same widths as an earlier finalist")
                continue
            seen.add(key)
            res = al.apply(a)
            c, res = evaluate_candidate(dense, splits, target, al.sparsity(a), "bn_scale", example, pricer, pruned=res,
                                        method=f"allocate/{scoring}{tag}", device=device)
            log(f"  candidate {describe(c)} -> {'fits' if c.fits else 'over budget'}")
            tried.append((c, res))
            new.append(len(tried) - 1)
        return new

    scaled = ", scaled by the dense model's predicted / measured p90" if target.speedup else ""

    def time_round(idx: list[int]) -> None:
        log(f"  timing {len(idx)} finalists on the device ...")
        got = time_on_device({tried[i][0].method: tried[i][1].model for i in idx})
        for i in idx:
            c, r = tried[i]
            m = round(float(got[c.method]), 5)
            # measured, the device decides against the whole budget: the margin was for the prediction's error (one
            # predicted over the whole budget does not fit on one timing)
            c = replace(c, measured_p90_ms=m, fits_latency=m <= pricer.budget_ms
                        and c.predicted_p90_ms <= pricer.budget_ms)
            tried[i] = (c, r)
            log(f"  {c.method}: measured p90 {m:.4f} ms on the device{scaled} (predicted {c.predicted_p90_ms:.4f}) -> "
                f"{'fits' if c.fits_latency else 'over budget'}")

    first = allocate_round(budget, "")
    if not first and time_on_device is not None and pricer.budget_ms > budget:
        # nothing predicted under the budget less its margin; what is predicted within the margin is timed, and the
        # device decides (squeezenet1_1 on this host: every droppable block gone predicts 2 % over the margined budget)
        log(f"  no allocation is predicted under {budget:.4g} ms; allocating under the whole budget "
            f"{pricer.budget_ms:.4g} ms, to be timed")
        first = allocate_round(pricer.budget_ms, "@margin")
    if time_on_device is not None and first:
        time_round(first)
        timed = [tried[i][0] for i in first]
        if not any(c.fits for c in timed):
            # the table misjudges this device: scale the budget by how far it was off, allocate and time once more
            ratio = float(sorted(c.measured_p90_ms / c.predicted_p90_ms for c in timed)[len(timed) // 2])
            # never below the narrowest widths: if the scaled budget is out of the table's reach, the narrowest
            # network is still worth timing (the scaling is a median guess; the device has the last word)
            floor = al.narrowest()["p90"] if al.blocks else narrowest["p90"]  # blocks may go on the second try
            again = max(budget / ratio, floor)
            log(f"  every finalist measured over budget on the device (measured / predicted = {ratio:.2f}); "
                f"allocating again under {again:.4g} ms predicted"
                + ("" if again == budget / ratio else " (the narrowest network allowed)"))
            second = allocate_round(again, "@device")
            if second:
                time_round(second)
    feasible = [t for t in tried if t[0].fits]
    if not feasible:
        measured = [c for c, _ in tried if c.measured_p90_ms is not None]
        why = (f"the finalists measured {min(c.measured_p90_ms for c in measured):.4g}-"
               f"{max(c.measured_p90_ms for c in measured):.4g} ms on the device, over the full "
               f"{pricer.budget_ms:.4g} ms, and "
               if measured else "")
        # blocks were looked for if any round needed them (never for the error alone: that is seconds of forwards)
        depth = (f" ({al.narrowest()['p90']:.4g} ms with all {len(al.blocks)} droppable blocks dropped)"
                 if al.blocks_known and al.blocks else "")
        raise BudgetError(
            f"no width allocation meets target {target.name!r}: budget p90 <= {budget:.4g} ms "
            f"({target.describe_budget()}{f', less a {pricer.margin:.0%} margin for prediction error' if pricer.margin else ''}); "
            f"{why}the narrowest allowed widths predict {narrowest['p90']:.4g} ms{depth} and the dense model "
            f"{dense_c.predicted_p90_ms:.4g} ms; relax the budget in {target.path} or use a smaller --model")
    chosen, res = max(feasible, key=lambda t: (t[0].val_acc_pruned, -t[0].predicted_p90_ms))
    return chosen, res, [c for c, _ in tried]


def candidates_table(cands: Sequence[Candidate]) -> list[dict]:
    return [asdict(c) for c in cands]
