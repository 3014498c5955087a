"""Deterministic 'measured' latency tables for tests that need a pricer without timing anything: each op costs a
fixed amount, plus per MAC, plus per input activation element (ms). Imported by the test modules (tests/ is on
sys.path under pytest's default import mode)."""
from __future__ import annotations

import dataclasses

from edge_sparse.latency.ops import extract_ops
from edge_sparse.latency.predict import Pricer
from edge_sparse.latency.table import LatencyTable, grid_ops
from edge_sparse.targets import load_target


def synthetic_table(ops, *, per_op: float = 1e-3, per_elem: float = 1e-7, overhead=(0.002, 0.0022),
                    provenance: dict | None = None) -> LatencyTable:
    """p50 = per_op + 1 ns per MAC + per_elem per input element; p90 = 1.1 x p50."""
    entries = {}
    for o in ops:
        ms = per_op + o.macs * 1e-6 + o.h * o.w * o.cin * per_elem
        entries[o.replace(name="").key] = {"p50": ms, "p90": ms * 1.1}
    return LatencyTable(dict(provenance or {}), {"p50": overhead[0], "p90": overhead[1]}, entries)


def synthetic_pricer(model, example, *, fixed_in: int, multiple: int = 8, **table) -> Pricer:
    """A measured-table pricer on the rpi4 profile (channel multiple `multiple`) whose table covers every width the
    allocator may choose for `model` (`grid_ops`, input channels fixed at `fixed_in`, 10 classes)."""
    t = dataclasses.replace(load_target("rpi4"), channel_multiple=multiple)
    ops = extract_ops(model, example)
    pr = Pricer(t, "measured", {}, synthetic_table(grid_ops(ops, multiple, fixed_in, 10), **table))
    pr.dense_p90_ms = pr.predict_ops(ops)["p90"]
    return pr
