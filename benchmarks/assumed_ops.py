"""How wrong is the device estimates' rule for the ops they have no reference timings of? Measured on this host.

The device estimates (edge_sparse/latency/estimate.py) are fitted on real Pi 4 / Pixel 3 timings of NAS-Bench-201
networks, which hold convs, pooling and ADD only. The ops of mobile classifiers (hard-swish, sigmoid, GELU, MUL, the
SE gate's broadcast MUL, CONCATENATION, a chunk's STRIDED_SLICE, a channel shuffle's GATHER, a standalone ReLU, a
channels-last LayerNorm's ten ops) are
priced by a rule: ADD's cost per byte moved. On a device the rule cannot be checked without timings of those ops;
here every op can be timed with the real interpreter, so this measures the rule where it can be measured: ADD's
per-byte cost is fitted on ADD probes of this host (least squares through the origin, overhead removed), each other
op is predicted from its bytes, and the prediction is compared with its own probe, all in one run.

Run: `.venv/bin/python -m benchmarks.assumed_ops [--write]` (~15 s) -> benchmarks/assumed_ops.json, the ratios the
estimates use (edge_sparse/latency/reference/assumed-ops.json), and with --write a section in BENCHMARKS.md. The same rule's error on a device can differ: ARM's int8 kernels for LOGISTIC / HARD_SWISH are
table lookups on both, GATHER does not run in XNNPACK on either (the builtin kernel, measured here too).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import publish
from edge_sparse import _io
from edge_sparse.latency import probes
from edge_sparse.latency.estimate import RATIOS_PATH, op_mbytes
from edge_sparse.latency.host import cpu_facts, provenance
from edge_sparse.latency.ops import Op
from edge_sparse.latency.table import LatencyTable

OUT = Path(__file__).resolve().parent / "assumed_ops.json"
SHAPES = [(56, 16), (28, 32), (28, 64), (14, 96), (14, 128), (7, 256), (7, 576)]  # (side, channels): mobile nets'
TAG = "assumed-ops"
KINDS = ["hardswish", "sigmoid", "gelu", "relu", "mul", "mulc", "concat", "slice", "shuffle", "layernorm",
         "avgpool"]  # NB201's 3x3 average pooling: the per-byte anchor where a device fit gives ADD no cost


def ops() -> list[Op]:
    out = []
    for side, c in SHAPES:
        out.append(Op("add", side, side, c, c))
        for k in KINDS:
            out.append(Op(k, side, side, c, c, k=3 if k == "avgpool" else 1, groups=2 if k == "shuffle" else 1))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.assumed_ops", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="splice the table into BENCHMARKS.md")
    a = ap.parse_args(argv)
    t0 = time.time()
    all_ops = ops()
    with tempfile.TemporaryDirectory(prefix="edge_sparse_assumed_") as tmp:
        suite_dir = probes.write_suite(all_ops, Path(tmp))
        suite = json.loads((suite_dir / "probes.json").read_text())
        timings = probes.time_suite(suite_dir, threads=1, runs=200, rounds=5)
    table = LatencyTable.from_timings(suite, timings, provenance(1, "benchmarks/assumed_ops.py"))
    adds = [o for o in all_ops if o.kind == "add"]
    x = np.array([op_mbytes(o) for o in adds])
    y = np.array([table.op_ms(o) for o in adds])
    per_mb = float(x @ y / (x @ x))  # ms per MB moved, through the origin
    rows = []
    for k in KINDS:
        errs = []
        for o in (o for o in all_ops if o.kind == k):
            measured, rule = table.op_ms(o), per_mb * op_mbytes(o)
            errs.append({"shape": f"{o.h}x{o.w}x{o.cin}", "measured_us": round(measured * 1e3, 3),
                         "rule_us": round(rule * 1e3, 3), "measured_over_rule": round(measured / rule, 3) if rule else None})
        ratios = np.array([e["measured_over_rule"] for e in errs if e["measured_over_rule"]])
        rows.append({"kind": k, "median_measured_over_rule": round(float(np.median(ratios)), 3),
                     "median_abs_err": round(float(np.median(np.abs(ratios - 1))), 3),
                     "max_abs_err": round(float(np.max(np.abs(ratios - 1))), 3), "shapes": errs})
    res = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_facts(), "add_ms_per_mb": round(per_mb, 5),
           "add_fit_r2": round(float(1 - ((y - per_mb * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()), 4),
           "kinds": rows, "seconds": round(time.time() - t0, 1), "command": "python -m benchmarks.assumed_ops"}
    _io.write_json(OUT, res)
    _io.write_json(RATIOS_PATH, {"what": "int8 op cost per byte moved relative to ADD's, median over shapes, one x86 "
                                         "host; edge_sparse/latency/estimate.py multiplies ADD's fitted per-byte factor "
                                         "by it for ops the device reference has no timings of",
                                 "date": res["date"], "machine": res["machine"], "command": res["command"],
                                 "kinds": [{k: r[k] for k in ("kind", "median_measured_over_rule", "max_abs_err")}
                                           for r in rows]})
    return publish(markdown(res), TAG, a.write)


def markdown(res: dict) -> str:
    m = res["machine"]
    L = [f"<!-- {TAG}:begin -->", "## Ops the device estimates price by assumption, measured on this host", "",
         "The device fits (Pi 4, Pixel 3) hold convs, pooling and ADD only. First rule tried: each other elementwise or "
         "data-movement op costs what ADD costs per byte moved. Measured here it is far off for the ops that run "
         "outside XNNPACK's int8 kernels (hard-swish, ReLU, a shuffle's GATHER: 26-39x ADD's per-byte cost) and for "
         "GELU (3x); the estimates now multiply ADD's per-byte factor by each kind's measured ratio below (the ratio "
         "travels to the device, not this host's time; an assumption the report names). The max column is the spread "
         "of that ratio over the shapes: the error left after the correction.", "",
         f"Measured {res['date']} on {m.get('cpu', '?')} (1 thread, ai-edge-litert + XNNPACK), `{res['command']}`, "
         f"{res['seconds']:.0f} s. ADD's cost per MB moved, fitted on {len(SHAPES)} ADD probes: "
         f"{res['add_ms_per_mb'] * 1e3:.1f} µs/MB (R² {res['add_fit_r2']:.3f}). Each op predicted from its bytes "
         f"with that cost, against its own probe ({len(SHAPES)} shapes each, 7x7 to 56x56, 16 to 576 channels):\n",
         "| op | measured / per-byte rule (median) | rule's median abs error | rule's max abs error | max error with "
         "the measured ratio |", "|---|---|---|---|---|"]
    for r in res["kinds"]:
        spread = max(abs(e["measured_over_rule"] / r["median_measured_over_rule"] - 1) for e in r["shapes"])
        L.append(f"| {r['kind']} | {r['median_measured_over_rule']:.2f} | {r['median_abs_err']:.0%} | "
                 f"{r['max_abs_err']:.0%} | {spread:.0%} |")
    L.append(f"<!-- {TAG}:end -->")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
