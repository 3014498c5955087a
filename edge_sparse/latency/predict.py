"""Predicted latency of a model on a target: from a measured table when the target has one, else the
target's published-figure estimate, labelled as such.

In:  a `Target`, the dense model and an example input (the table is profiled for every width the
     search may choose: the dense ops on the target's channel-multiple grid).
Out: `Pricer`: `predict(model)` / `predict_ops(ops)` -> p50/p90 ms with a per-op breakdown, the
     resolved budget (absolute, or the dense model's p90 / speedup), the margin kept for an
     estimate's error, and where the numbers come from (`source`: measured | estimate, `provenance`).
Run: `es.predict_latency(model, example, target="host")`; the search and the report use `resolve`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import Op, extract_ops
from edge_sparse.latency.table import LatencyTable, grid_ops
from edge_sparse.targets import Target, load_target


# The host table's prediction error on this machine (`edge-sparse latency check --target host`, 33 pruned
# variants of 3 architectures, table probed in the same run): predicted speedup over the dense model within
# 4.1 % at p90 (median 1.6 %); the table is re-probed when the machine drifts by more than 10 %. The
# search keeps this much of a host budget free, so that what it ships measures under the budget here.
HOST_MARGIN = 0.05


@dataclass
class Pricer:
    target: Target
    source: str  # "measured" | "estimate"
    provenance: dict
    table: Optional[LatencyTable] = None
    margin: float = 0.0  # fraction of the budget kept free for the prediction's error (HOST_MARGIN on this host)
    dense_p90_ms: Optional[float] = None
    notes: list = field(default_factory=list)
    fitted: Optional[object] = None  # estimate.FittedEstimate for an estimate target with a reference fit
    # ms per MB of weights read per invoke, on top of a measured table's per-op costs (`calibrate_weights`): 0 until
    # the dense model has been timed beside the table; `weights` says how it was measured
    ms_per_weight_mb: float = 0.0
    weights: Optional[dict] = None
    # (p50 ms, p90 / p50) of the dense model timed whole beside the table (`calibrate_weights`): the table's tail
    # curve (`LatencyTable.jitter`) ends with its probes at ~1 ms; a whole model's own tail anchors it beyond them
    jitter_anchor: Optional[tuple] = None

    def op_ms(self, o: Op) -> float:
        """One op's share of an invoke (ms): what `predict_ops` sums (a model's cost is its ops' costs plus `total`'s
        fixed terms, so a search can re-price only the ops a width change touches)."""
        if self.table is not None:
            m = self.table.op_ms(o)
            if self.ms_per_weight_mb:  # its weights, streamed from beyond the cache its probe ran them in
                m += self.ms_per_weight_mb * o.weight_bytes / 1e6
            return m
        if self.fitted is not None:  # per-op-class factors fitted on real device timings (estimate.py)
            return self.fitted.op_ms(o)
        lm = self.target.latency_model  # the estimate: ms/MMAC + ms/layer, spread over the ops by their MACs
        return lm.ms_per_mmac * o.macs / 1e6 + (lm.ms_per_layer if o.kind in ("conv", "dwconv", "fc") else 0.0)

    def total(self, ops_ms: float) -> tuple[float, float]:
        """(p50, p90) of an invoke whose ops cost `ops_ms` in all: the runtime's fixed cost added, and for a measured
        table its tail (`LatencyTable.jitter`)."""
        if self.table is not None:
            p50 = self.table.overhead["p50"] + ops_ms
            return p50, p50 * self.table.jitter(p50, self.jitter_anchor)
        p90 = (self.fitted.overhead_ms if self.fitted is not None else self.target.latency_model.overhead_ms) + ops_ms
        return p90, p90

    def predict_ops(self, ops: Sequence[Op]) -> dict:
        per = [self.op_ms(o) for o in ops]
        p50, p90 = self.total(sum(per))
        return {"p50": round(p50, 5), "p90": round(p90, 5), "source": self.source,
                "layers": [{"name": o.name, "op": o.kind, "key": o.key, "cin": o.cin, "cout": o.cout, "ms": round(m, 5)}
                           for o, m in zip(ops, per)]}

    def predict(self, model: torch.nn.Module, example: torch.Tensor) -> dict:
        return self.predict_ops(extract_ops(model, example))

    def calibrate_weights(self, dense_ops: Sequence[Op], measured_p50_ms: float, how: str,
                          measured_p90_ms: Optional[float] = None) -> dict:
        """Price the weights' trip from memory, from the dense model timed whole on the table's own machine.

        A table's probe runs one op again and again, its weights staying in cache; in a whole model each op's weights
        were evicted by the other ops' since its last invoke (the zoo's retime, benchmarks/zoo.json: 8 of 10 dense models
        13-40 % over their tables' sums on a 2-core Xeon; not all of it is weights: a 0.6 MB one was +20 %). The dense model's measured p50 less the
        table's sum, per MB of its weights (never below 0: a table that over-prices a model has other errors, which
        this term would not fix), is added to every op per MB of its own weights, so a narrower model is priced by
        what it still reads. Resets the dense model's p90 (the
        relative budget's reference) to the calibrated prediction. `how`: where the timing came from, for the report.
        With `measured_p90_ms` (the same timing's p90), the dense model's p90 / p50 anchors the table's tail curve at
        its length (`LatencyTable.jitter`): the dense model then predicts its own measured p90 (unless the table alone
        over-prices it, when its predicted p50 stays the table's).
        """
        if self.table is None:
            raise EdgeSparseError("only a measured table is calibrated against a timing of the dense model")
        table_p50 = self.table.predict(dense_ops)["p50"]  # the table alone, whatever price is set
        mb = sum(o.weight_bytes for o in dense_ops) / 1e6
        return self.apply_weights({
            "ms_per_weight_mb": round(max(0.0, (measured_p50_ms - table_p50) / mb), 6) if mb else 0.0,
            "dense_measured_p50_ms": round(measured_p50_ms, 5), "dense_table_p50_ms": round(table_p50, 5),
            "dense_weight_mb": round(mb, 6), "how": how,
            **({"dense_measured_p90_ms": round(measured_p90_ms, 5)} if measured_p90_ms else {})}, dense_ops)

    def apply_weights(self, weights: dict, dense_ops: Sequence[Op]) -> dict:
        """The weights' price `calibrate_weights` found (saved with the search), applied as it was: later stages, and a
        resumed build, price every model as the search did."""
        self.ms_per_weight_mb, self.weights = float(weights["ms_per_weight_mb"]), dict(weights)
        p50, p90 = weights.get("dense_measured_p50_ms"), weights.get("dense_measured_p90_ms")
        self.jitter_anchor = (float(p50), float(p90) / float(p50)) if p50 and p90 else None
        self.dense_p90_ms = self.predict_ops(dense_ops)["p90"]
        return self.weights

    @property
    def budget_ms(self) -> float:
        return self.target.budget_ms(self.dense_p90_ms)

    @property
    def effective_budget_ms(self) -> float:
        """What the search keeps the predicted p90 under: the budget less the prediction's margin."""
        return self.budget_ms * (1 - self.margin)

    def describe(self) -> str:
        p = self.provenance
        if self.source == "measured":
            w = (f", weights priced at {self.ms_per_weight_mb * 1000:.1f} us/MB by the dense model timed whole"
                 if self.weights else "")
            return (f"measured: {p.get('device', '?')} ({p.get('cpu', '?')}), {p.get('runtime_version', '?')}, "
                    f"{p.get('threads', '?')} threads, {p.get('date', '?')}{w}")
        if self.fitted is not None:
            h = p["held_out"]
            return (f"ESTIMATE, not measured on the device: per-op-class costs fitted on {p['networks']} real timings "
                    f"({p['shape_from'].split(':')[0]}; held-out Spearman {h['spearman']:.3f}, median |error| "
                    f"{h['median_abs_err']:.1%}, p90 |error| {h['p90_abs_err']:.1%}), scaled to {p['anchor']}; "
                    f"`make profile TARGET={self.target.name} DEVICE=...` replaces it with a measured table")
        return (f"ESTIMATE from published figures ([latency_model] of {self.target.path}), not measured on the device; "
                f"`make profile TARGET={self.target.name} DEVICE=...` replaces it with a measured table")

    def to_dict(self) -> dict:
        return {"source": self.source, "provenance": self.provenance, "margin": self.margin,
                "budget_ms": round(self.budget_ms, 5), "effective_budget_ms": round(self.effective_budget_ms, 5),
                "budget": self.target.describe_budget(), "dense_p90_ms": self.dense_p90_ms,
                "table": self.table.path if self.table else None, "weights": self.weights}


def resolve(target: Target | str, dense: torch.nn.Module, example: torch.Tensor, *, log=None,
            cache_dir: Path | str = "build/latency") -> Pricer:
    """The pricer for `target`, its table covering every width choice of `dense` on the channel grid."""
    t = load_target(target) if isinstance(target, str) else target
    ops = extract_ops(dense, example)
    if t.latency_table == "host":
        from edge_sparse.latency.host import host_table

        table = host_table(_host_grid(t, ops, example.shape[1]), t.threads, cache_dir=cache_dir, log=log)
        pr = Pricer(t, "measured", dict(table.provenance), table, margin=HOST_MARGIN)
    elif t.latency_table:
        table = LatencyTable.load(Path(t.path).parent / t.latency_table)
        if int(table.provenance.get("threads", -1)) != t.threads:
            raise EdgeSparseError(f"{table.path}: measured with {table.provenance.get('threads')} threads, but target "
                                  f"{t.name} runs {t.threads}; re-profile with `make profile TARGET={t.name}`")
        from edge_sparse.latency.probes import VERSION, priced_in_context

        old = next((o for o in ops if priced_in_context(o.key)), None)
        if old is not None and int(table.provenance.get("probes_version", 1)) < VERSION:
            raise EdgeSparseError(f"{table.path} was profiled with probes of version "
                                  f"{table.provenance.get('probes_version', 1)}, which time {old.key} ({old.name}) alone, "
                                  f"not as a model runs it; re-profile: make profile TARGET={t.name} DEVICE=...")
        missing = [o for o in ops if not table.covers(o)]
        if missing:
            raise EdgeSparseError(f"{table.path} does not cover {missing[0].key} ({missing[0].name}); profile this "
                                  f"architecture on the device: make profile TARGET={t.name} DEVICE=...")
        pr = Pricer(t, "measured", dict(table.provenance), table)
    else:
        from edge_sparse.latency import estimate

        fitted = estimate.load(t)
        if fitted is not None:  # the search keeps the fit's measured error free: margin = held-out p90 |error|
            assumed = priced_by_assumption(ops)
            notes = [f"{k} x{len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''}) as "
                     f"{estimate.FALLBACK[k]}" for k, v in assumed.items()]
            pr = Pricer(t, "estimate", {**fitted.provenance, "priced_by_assumption": assumed,
                                        "assumptions": fitted.assumptions + (
                                            [f"this model's ops the reference has no timings of, priced by the rule "
                                             f"above: {'; '.join(notes)}"] if notes else []),
                                        "anchor_source_text": t.latency_model.source.strip()},
                        margin=round(fitted.margin, 4), fitted=fitted)
        else:
            pr = Pricer(t, "estimate", {"source_text": t.latency_model.source.strip()})
    pr.dense_p90_ms = pr.predict_ops(ops)["p90"]
    return pr


def _host_grid(t: Target, ops: Sequence[Op], in_channels: int) -> list[Op]:
    """Every op a host table must price for `ops` (a dense model's) at any width on the target's channel grid."""
    return grid_ops(ops, t.channel_multiple, fixed_in=in_channels, fixed_out=ops[-1].cout)


def recheck_host_table(pr: Pricer, dense_ops: Sequence[Op], in_channels: int, log=None) -> bool:
    """Check `pr`'s host table against this host now and, where it drifted, price with the table probed again
    (`host.recheck`); True if it was. The dense model's predicted p90 follows the new table."""
    if pr.table is None or pr.target.latency_table != "host":
        return False
    from edge_sparse.latency.host import recheck

    new = recheck(pr.table, _host_grid(pr.target, dense_ops, in_channels), pr.target.threads, log=log)
    if new is pr.table:
        return False
    pr.table, pr.provenance = new, dict(new.provenance)
    pr.dense_p90_ms = pr.predict_ops(dense_ops)["p90"]
    return True


def priced_by_assumption(ops: Sequence[Op]) -> dict[str, list[str]]:
    """Op class -> names of `ops` that a device estimate prices with another class's factors (estimate.FALLBACK)."""
    from edge_sparse.latency.estimate import FALLBACK

    out: dict[str, list[str]] = {}
    for o in ops:
        if o.cls() in FALLBACK and o.kind != "pad":
            out.setdefault(o.cls(), []).append(o.name or o.kind)
    return out


def predict_latency(model: torch.nn.Module, example_input: torch.Tensor, target: Target | str = "host", **kw) -> dict:
    """p50/p90 (ms) of `model` on `target`, per-layer breakdown, and `source` (measured | estimate)."""
    pr = resolve(target, model, example_input, **kw)
    out = pr.predict(model, example_input)
    out["provenance"] = pr.provenance
    return out


def measure_latency(path: str | Path, threads: int = 1, runs: int = 200, warmup: int = 20) -> dict:
    """Percentiles (ms) of single-image invokes of a .tflite on this host (ai-edge-litert + XNNPACK)."""
    from edge_sparse.latency import measure_tflite

    return measure_tflite(Path(path), threads=threads, runs=runs, warmup=warmup)
