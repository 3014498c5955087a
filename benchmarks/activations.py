"""Does the host table price each activation as a whole model pays for it? Measured differentially on this host.

Seven variants of the registered MobileNetV3-Small at 3x96x96 that differ only in their activations and SE blocks
(hard-swish + hard-sigmoid SE as MobileNetV3 ships; all ReLU; no SE; a sigmoid gate; EfficientNet's SiLU + sigmoid
SE; SiLU without SE) are exported to int8 `.tflite` by the build's own exporter and timed beside the probes of their
ops, all in one interleaved run (a shared VM drifts between runs; within one, every model and probe sees the same
machine). Each variant is predicted twice from those probes: with the table as builds price today (hard-swish and GELU
probed between two 1x1 convs less the convs, a SiLU's MUL probed as x * sigmoid(x) less its LOGISTIC:
edge_sparse/latency/probes.py) and with each of those ops probed alone, as the table did before. A pricing that is
right for one activation and wrong for another shows as errors of different sign between the variants; the weights
price a build adds (calibrated on the dense model) can absorb a common error, not a per-activation one.

Run: `.venv/bin/python -m benchmarks.activations [--write]` (~5 min; exports cached under build/activations/) ->
benchmarks/activations.json, and with --write a section in BENCHMARKS.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from benchmarks import publish
from edge_sparse import _io, models
from edge_sparse.latency import measure_many, probes
from edge_sparse.latency.host import cpu_facts, provenance, runtime_version
from edge_sparse.latency.hostcheck import _export
from edge_sparse.latency.ops import Op, extract_ops
from edge_sparse.latency.table import LatencyTable

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "activations.json"
CACHE = ROOT / "build" / "activations"
TAG = "activations"
SHAPE = (3, 96, 96)
_NO_SE = tuple((k, e, o, False, hs, s) for k, e, o, se, hs, s in models.MobileNetV3Small.CFG)
VARIANTS = {
    "hard-swish, SE (hard-sigmoid)": dict(),
    "ReLU, SE (hard-sigmoid)": dict(act=nn.ReLU),
    "hard-swish, no SE": dict(cfg=_NO_SE),
    "ReLU, no SE": dict(act=nn.ReLU, cfg=_NO_SE),
    "hard-swish, SE (sigmoid)": dict(gate=nn.Sigmoid),
    "SiLU, SE (sigmoid)": dict(act=nn.SiLU, gate=nn.Sigmoid),
    "SiLU, no SE": dict(act=nn.SiLU, gate=nn.Sigmoid, cfg=_NO_SE),
}


def _variant(kw: dict) -> nn.Module:
    torch.manual_seed(0)
    m = models.MobileNetV3Small(in_channels=SHAPE[0], num_classes=10, input_size=SHAPE[1], **kw)
    for mod in m.modules():  # non-trivial BN statistics, as a trained net has
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.1, 1.0)
    return m.eval()


def _alone(op: Op) -> bytes:
    """The probe the table used before: the op alone (hard-swish, GELU), a SiLU's MUL as a MUL of two inputs."""
    import tensorflow as tf

    spec = [tf.TensorSpec([1, op.h, op.w, op.cin], tf.float32)]
    if op.kind == "mul":
        spec, fn = spec * 2, (lambda x, y: x * y)
    else:
        fn = {"hardswish": lambda x: x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0),
              "gelu": lambda x: tf.nn.gelu(x, approximate=True)}[op.kind]
    return probes.convert(fn, spec, what=f"{op.key} alone")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.activations", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="splice the table into BENCHMARKS.md")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs (default 2)")
    a = ap.parse_args(argv)
    t0 = time.time()
    ex = torch.zeros(1, *SHAPE)
    variants, need = [], {}
    for name, kw in VARIANTS.items():
        m = _variant(kw)
        ops = extract_ops(m, ex)
        tag = "v-" + "".join(c if c.isalnum() else "-" for c in name.lower())
        variants.append((name, ops, _export(m, SHAPE, CACHE / tag)))
        for o in ops:
            need.setdefault(o.replace(name="").key, o.replace(name=""))
    suite_dir = CACHE / "probes"
    with _io.atomic_dir(suite_dir) as tmp:  # rebuilt each run: the probes are what is under test
        probes.write_suite(need.values(), tmp)
        for o in need.values():
            if probes.baseline(o) is not None and o.kind != "sigmoid":
                (tmp / f"alone-{probes.probe_name(o)}.tflite").write_bytes(_alone(o))
    suite = json.loads((suite_dir / "probes.json").read_text())
    probe_paths = [suite_dir / p["file"] for p in suite["probes"]]
    alone = {o.key: suite_dir / f"alone-{probes.probe_name(o)}.tflite" for o in need.values()
             if (suite_dir / f"alone-{probes.probe_name(o)}.tflite").is_file()}
    paths = probe_paths + list(alone.values()) + [v[2] for v in variants]
    rows = []
    for rep in range(a.repeats):
        timed = measure_many(paths, threads=1, runs=1000, rounds=50)
        n, na = len(probe_paths), len(alone)
        t = {p["name"]: m for p, m in zip(suite["probes"], timed[:n])}
        table = LatencyTable.from_timings(suite, {"timings": t}, provenance(1, "benchmarks/activations.py"))
        before = LatencyTable(table.provenance, table.overhead, dict(table.entries))
        for key, m in zip(alone, timed[n:n + na]):
            before.entries[key] = {q: max(0.0, m[q] - table.overhead["p50"]) for q in ("p50", "p90")}
        for (name, ops, _), m in zip(variants, timed[n + na:]):
            now, then = table.predict(ops)["p50"], before.predict(ops)["p50"]
            rows.append({"repeat": rep, "variant": name, "ops": len(ops), "measured_p50_ms": round(m["p50"], 5),
                         "predicted_p50_ms": round(now, 5), "alone_predicted_p50_ms": round(then, 5),
                         "error": round(now / m["p50"] - 1, 4), "alone_error": round(then / m["p50"] - 1, 4)})
            print(f"  run {rep + 1}: {name:30s} measured {m['p50']:.3f} ms, predicted {now:.3f} ({now / m['p50'] - 1:+.1%}); "
                  f"ops alone {then:.3f} ({then / m['p50'] - 1:+.1%})", flush=True)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_facts(), "runtime": runtime_version(), "rows": rows,
           "seconds": round(time.time() - t0, 1), "command": "python -m benchmarks.activations"}
    _io.write_json(OUT, res)
    return publish(markdown(res), TAG, a.write)


def markdown(res: dict) -> str:
    m = res["machine"]
    by: dict[str, list] = {}
    for r in res["rows"]:
        by.setdefault(r["variant"], []).append(r)
    L = [f"<!-- {TAG}:begin -->", "## Activations priced as a whole model pays for them (host table)", "",
         "Seven MobileNetV3-Small variants at 96 px that differ only in activation and SE, exported by the build's "
         "exporter and timed beside the probes of their ops in one interleaved run; p50, 1 thread. *Now*: hard-swish "
         "and GELU probed between two 1x1 convs less the convs, a SiLU's MUL probed as x * sigmoid(x) less its "
         "LOGISTIC. *Alone*: those ops probed alone, as the table did before. The build's weights price (calibrated "
         "on the dense model) absorbs an error common to every variant, not one that differs by activation.", "",
         f"Measured {res['date']} on {m.get('cpu', '?')} ({', '.join(m.get('isa', []))}), {res['runtime']}, "
         f"`{res['command']}`, {res['seconds']:.0f} s, {max(r['repeat'] for r in res['rows']) + 1} runs "
         "(error: median over the runs).", "",
         "| variant | ops | measured p50 ms | predicted now | error now | predicted, ops alone | error, ops alone |",
         "|---|---|---|---|---|---|---|"]
    med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
    for name, rs in by.items():
        L.append(f"| {name} | {rs[0]['ops']} | {med(rs, 'measured_p50_ms'):.3f} | {med(rs, 'predicted_p50_ms'):.3f} | "
                 f"{med(rs, 'error'):+.1%} | {med(rs, 'alone_predicted_p50_ms'):.3f} | {med(rs, 'alone_error'):+.1%} |")
    errs = [med(rs, "error") for rs in by.values()]
    alone = [med(rs, "alone_error") for rs in by.values()]
    L += ["", f"Spread of the error across the variants: now {min(errs):+.1%} to {max(errs):+.1%} "
              f"({(max(errs) - min(errs)) * 100:.1f} pt); ops alone {min(alone):+.1%} to {max(alone):+.1%} "
              f"({(max(alone) - min(alone)) * 100:.1f} pt).", f"<!-- {TAG}:end -->"]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
