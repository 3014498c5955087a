"""`make benchmarks-latency` / `python -m benchmarks.latency`: the measured-latency claims, side by side.

1. Predictor accuracy on this host: `edge-sparse latency check --target host` (random pruned variants of
   ResNet-8 1x28x28, the MobileNetV2-style net 3x96x96 and a VGG-style net 1x28x28; predicted from the
   grid table the search uses vs measured on their real int8 .tflite, all timed in one interleaved run).
2. Budget fill: the default rpi4 bundle's predicted p90 / budget; the host bundle's shipped model
   measured here (interleaved with its dense int8 model) against its budget.
3. Speedup at 1 thread, same runtime: shipped int8 vs dense fp32 .tflite of the default model (with the
   accuracy it costs, whole test split), and the same on the compute-bound MobileNetV2-style net at
   3x96x96 pruned by the allocation to 2x / 4x budgets (untrained weights: latency only).

Writes benchmarks/out/latency.json and the "Measured latency" section of BENCHMARKS.md (between markers,
so `make benchmarks` keeps it). Resumable: exports and the host table are cached in build/latency/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import splice

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
PARTS = ("predictor", "fill", "speedup")


def _bundle_cache(bundle: Path, cache: Path) -> dict:
    """The export stage directory of a bundle's build (its dense fp32/int8 .tflite live there), found by the int8
    ONNX model, which the bundle copies as is (its .tflite gains metadata on the way)."""
    meta = json.loads((bundle / "metadata.json").read_text())
    for d in sorted(cache.glob("export-*")):
        if (d / "model.onnx").is_file() and (d / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes():
            return {"dir": d, "meta": meta}
    return {"dir": None, "meta": meta}


def predictor_accuracy(per_arch: int, log) -> dict:
    from edge_sparse.latency import hostcheck

    return hostcheck.run("host", per_arch=per_arch, log=log)


def budget_fill(log) -> dict:
    from edge_sparse.latency import measure_many
    from edge_sparse.targets import load_target

    out = {}
    cache = ROOT / "build" / "cache"
    for target in ("rpi4", "host"):
        b = ROOT / "dist" / target
        if not (b / "metadata.json").is_file():
            out[target] = {"missing": f"no bundle in dist/{target}: run make build TARGET={target}"}
            continue
        meta = json.loads((b / "metadata.json").read_text())
        lat = meta["latency_ms"]
        row = {"source": lat.get("source"), "budget_ms": lat["budget"], "predicted_p90_ms": lat["predicted_p90"],
               "predicted_fill": lat["predicted_p90"] / lat["budget"], "macs": meta["model"]["macs"],
               "dense_macs": meta["dense"]["macs"], "budget_spec": lat.get("budget_spec"),
               "dense_predicted_p90_ms": lat.get("dense_predicted_p90")}
        if target == "host":
            e = _bundle_cache(b, cache)["dir"]
            paths = [b / "model.tflite"] + ([e / "dense_int8.tflite"] if e else [])
            reps = [measure_many(paths, threads=meta["threads"], runs=2000, rounds=200) for _ in range(3)]
            m = sorted(reps, key=lambda r: r[0]["p90"])[1]  # the median of three side-by-side runs
            row.update(measured_p90_ms=m[0]["p90"], measured_p50_ms=m[0]["p50"],
                       measured_fill=m[0]["p90"] / lat["budget"])
            if e:
                k = load_target(target).speedup
                row.update(dense_measured_p90_ms=m[1]["p90"], measured_speedup_p90=m[1]["p90"] / m[0]["p90"],
                           measured_speedups_p90=[r[1]["p90"] / r[0]["p90"] for r in reps],
                           measured_speedups_p50=[r[1]["p50"] / r[0]["p50"] for r in reps])
                if k:  # a relative budget: the fill against the dense model measured in the same run
                    row["measured_fill_vs_dense"] = [k * r[0]["p90"] / r[1]["p90"] for r in reps]
        out[target] = row
    return out


def speedups(log) -> dict:
    from edge_sparse import models
    from edge_sparse.allocate import Allocator
    from edge_sparse.latency import measure_many
    from edge_sparse.latency.hostcheck import _export, _model
    from edge_sparse.latency.predict import resolve

    out = {}
    b = ROOT / "dist" / "rpi4"
    if (b / "metadata.json").is_file():
        info = _bundle_cache(b, ROOT / "build" / "cache")
        e, meta = info["dir"], info["meta"]
        if e is not None:
            m = measure_many([e / "dense_fp32.tflite", e / "dense_int8.tflite", e / "model_fp32.tflite", e / "model.tflite"],
                             threads=1, runs=2000, rounds=200)
            t = meta["accuracy"].get("test", {})
            out["resnet8_default"] = {
                "p50_ms": {"dense_fp32": m[0]["p50"], "dense_int8": m[1]["p50"], "pruned_fp32": m[2]["p50"], "shipped_int8": m[3]["p50"]},
                "speedup_shipped_int8_vs_dense_fp32": m[0]["p50"] / m[3]["p50"],
                "speedup_pruning_alone_int8": m[1]["p50"] / m[3]["p50"], "mac_ratio": meta["dense"]["macs"] / meta["model"]["macs"],
                "int8_vs_fp32_dense": m[0]["p50"] / m[1]["p50"],
                "accuracy_cost_pt": (t.get("tflite_int8", {}).get("acc", float("nan")) - t.get("torch_fp32_dense", {}).get("acc", float("nan")))
                if t else None, "test_n": t.get("n")}
    # compute-bound: the MobileNetV2-style net at 3x96x96, allocation to 2x and 4x host budgets (latency only)
    dense = _model("mobilenetv2", (3, 96, 96))
    ex = torch.zeros(1, 3, 96, 96)
    pr = resolve("host", dense, ex, log=log)
    al = Allocator(dense, ex, pr, 8)
    cache = ROOT / "build" / "latency" / "speedup"
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    fp32 = cache / "mobilenetv2-dense" / "fp32.tflite"
    if not fp32.is_file():
        fp32.parent.mkdir(parents=True, exist_ok=True)
        calib = np.random.default_rng(0).standard_normal((16, 96, 96, 3)).astype(np.float32)
        eonnx.export_fp32(dense, (3, 96, 96), fp32.parent / "m.onnx")
        etflite.export(fp32.parent / "m.onnx", calib, fp32, fp32.parent / "int8.tflite")
    paths, rows = [fp32, fp32.parent / "int8.tflite"], []
    for k in (2.0, 4.0):
        a = al.allocate(pr.dense_p90_ms / k, "importance")
        if a is None:
            rows.append({"budget": f"{k:g}x", "result": "no allocation meets it"})
            continue
        model = al._pruned(a.keep)
        model.__dict__.pop("_edge_sparse_dg", None)
        paths.append(_export(model, (3, 96, 96), cache / f"mobilenetv2-{k:g}x"))
        rows.append({"budget": f"{k:g}x", "predicted_p90_ms": a.p90_ms,
                     "macs": sum(o.macs for o in al.ops_for(a.keep))})
    m = measure_many(paths, threads=1, runs=300, rounds=30)
    out["mobilenetv2_96"] = {"dense_fp32_p50_ms": m[0]["p50"], "dense_int8_p50_ms": m[1]["p50"],
                             "dense_macs": sum(o.macs for o in al.ops), "points": rows}
    j = 2
    for r in rows:
        if "predicted_p90_ms" in r:
            r.update(measured_p50_ms=m[j]["p50"], measured_p90_ms=m[j]["p90"],
                     speedup_vs_dense_fp32=m[0]["p50"] / m[j]["p50"], speedup_vs_dense_int8=m[1]["p50"] / m[j]["p50"])
            j += 1
    return out


def markdown(res: dict) -> str:
    from edge_sparse.latency.hostcheck import format_report

    pa, cpu = res["predictor"], res["predictor"]["cpu"]
    L = [BEGIN, "## Measured latency (`python -m benchmarks.latency`)\n",
         f"Measured {res['date']} on {cpu['cpu']} ({', '.join(cpu['isa'])}), {pa['runtime']}, in one run; every "
         f"number below is from `benchmarks/out/latency.json`.\n",
         "### Predictor accuracy on this host (goal: ≥ 90 % of p90 within ±10 %, median |error| ≤ 5 %)\n",
         "| quantile | within ±10 % | median \\|error\\| | worst |\n|---|---|---|---|"]
    for q in ("p50", "p90"):
        s = pa[q]
        L.append(f"| {q} | {s['within_10pct']:.0%} | {s['median_abs_err']:.1%} | {s['max_abs_err']:.1%} |")
    for name, what in (("relative", "speedup over dense, predicted vs measured"), ("noise_floor", "noise floor: measured twice"),
                       ("cached", "the cached table a build used (probed earlier)"),
                       ("cached_relative", "speedup over dense, cached table")):
        for q in ("p50", "p90"):
            s = pa.get(name, {}).get(q, {})
            if s.get("n"):
                L.append(f"| {q}, {what} | {s['within_10pct']:.0%} | {s['median_abs_err']:.1%} | {s['max_abs_err']:.1%} |")
    L.append("\nPredicted with the search's own code from a table whose probes were timed in the same interleaved run "
             "as the variants (one untimed invoke after each switch of model); the cached rows use the table in "
             "build/latency/ as it was, which says how far this shared machine drifted since it was probed.")
    L.append("\n```\n" + format_report(pa) + "\n```\n")
    bf = res["fill"]
    L.append("### Budget fill (goal: rpi4 predicted 90–100 % of the budget; host measured 85–100 %)\n")
    if res.get("dates", {}).get("fill", res["date"]) != res["date"]:
        L.append(f"Measured {res['dates']['fill']} (`--parts fill`).\n")
    L.append("| target | latency source | budget (ms) | predicted p90 (ms) | fill (predicted) | measured p90 here (ms) | fill (measured) |")
    L.append("|---|---|---|---|---|---|---|")
    for t, r in bf.items():
        if "missing" in r:
            L.append(f"| {t} | – | – | – | – | – | {r['missing']} |")
            continue
        meas = f"{r['measured_p90_ms']:.4f}" if "measured_p90_ms" in r else "– (no device here)"
        mf = f"{r['measured_fill']:.0%}" if "measured_fill" in r else "–"
        L.append(f"| {t} | {r['source']} | {r['budget_ms']:.4g} | {r['predicted_p90_ms']:.4f} | {r['predicted_fill']:.0%} | {meas} | {mf} |")
    h = bf.get("host", {})
    if "measured_speedup_p90" in h:
        L.append(f"\nhost, timed side by side with its dense int8 model: shipped p90 {h['measured_p90_ms']:.4f} ms vs dense "
                 f"{h['dense_measured_p90_ms']:.4f} ms = **{h['measured_speedup_p90']:.2f}× faster** (the profile asks for "
                 f"{h['budget_spec']}; the table predicted {h['dense_predicted_p90_ms'] / h['predicted_p90_ms']:.2f}×).")
        if "measured_fill_vs_dense" in h:
            L.append(f"Three side-by-side runs: p90 speedup {' / '.join(f'{x:.2f}×' for x in h['measured_speedups_p90'])}, "
                     f"p50 {' / '.join(f'{x:.2f}×' for x in h['measured_speedups_p50'])}; fill of the relative budget "
                     f"against the dense model measured in the same run (p90) "
                     f"**{' / '.join(f'{x:.0%}' for x in h['measured_fill_vs_dense'])}**. The ms columns compare with the "
                     f"budget the build resolved from its table, probed at another moment of this machine's drifting speed.")
    sp = res["speedup"]
    L.append("\n### Speedup at 1 thread, same runtime (ai-edge-litert + XNNPACK), p50 of interleaved runs\n")
    if res.get("dates", {}).get("speedup", res["date"]) != res["date"]:
        L.append(f"Measured {res['dates']['speedup']} (`--parts speedup`).\n")
    r = sp.get("resnet8_default")
    if r:
        p = r["p50_ms"]
        cost = f"{r['accuracy_cost_pt']:+.2f} pt (shipped int8 − dense fp32, {r['test_n']:,} test images)" if r.get("accuracy_cost_pt") is not None else "n/a"
        L.append(f"- Default ResNet-8 (1×28×28): dense fp32 {p['dense_fp32']:.4f} ms, dense int8 {p['dense_int8']:.4f}, pruned fp32 "
                 f"{p['pruned_fp32']:.4f}, **shipped int8 {p['shipped_int8']:.4f} ms → {r['speedup_shipped_int8_vs_dense_fp32']:.2f}× "
                 f"vs dense fp32**, {r['speedup_pruning_alone_int8']:.2f}× from pruning alone (MAC ratio {r['mac_ratio']:.2f}); "
                 f"int8 vs fp32 on the dense model {r['int8_vs_fp32_dense']:.2f}×. Accuracy cost: {cost}.")
    mb = sp["mobilenetv2_96"]
    L.append(f"- MobileNetV2-style (3×96×96, {mb['dense_macs'] / 1e6:.1f} M MACs, untrained weights — latency only): dense fp32 "
             f"{mb['dense_fp32_p50_ms']:.3f} ms, dense int8 {mb['dense_int8_p50_ms']:.3f} ms.")
    for pt in mb["points"]:
        if "measured_p50_ms" in pt:
            L.append(f"  - allocated to a {pt['budget']} host budget: {pt['macs'] / 1e6:.1f} M MACs, predicted p90 "
                     f"{pt['predicted_p90_ms']:.3f} ms, measured p50 {pt['measured_p50_ms']:.3f} / p90 {pt['measured_p90_ms']:.3f} ms → "
                     f"**{pt['speedup_vs_dense_fp32']:.2f}× vs dense fp32**, {pt['speedup_vs_dense_int8']:.2f}× vs dense int8")
        else:
            L.append(f"  - {pt['budget']}: {pt['result']}")
    L.append(END)
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io

    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    p.add_argument("--per-arch", type=int, default=10)
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"which sections to measure again ({', '.join(PARTS)}); the others are kept from "
                        "benchmarks/out/latency.json")
    a = p.parse_args(argv)
    parts = [x for x in a.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        print(f"error: --parts: unknown {', '.join(bad) or '(none given)'}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    old = json.loads((OUT / "latency.json").read_text()) if (OUT / "latency.json").is_file() else {}
    missing = [x for x in PARTS if x not in parts and x not in old]
    if missing:
        print(f"error: --parts {a.parts}: benchmarks/out/latency.json has no {missing[0]} section to keep; "
              f"measure it too", file=sys.stderr)
        return 2
    log = print
    OUT.mkdir(parents=True, exist_ok=True)
    today = time.strftime("%Y-%m-%d")
    res = {"date": old.get("date", today), "dates": {x: old.get("dates", {}).get(x, old.get("date")) for x in PARTS}}
    run = {"predictor": lambda: predictor_accuracy(a.per_arch, log), "fill": lambda: budget_fill(log),
           "speedup": lambda: speedups(log)}
    for x in PARTS:
        res[x] = run[x]() if x in parts else old[x]
        if x in parts:
            res["dates"][x] = today
    res["date"] = res["dates"]["predictor"]
    _io.write_json(OUT / "latency.json", res)
    (ROOT / "benchmarks" / "latency.md").write_text(markdown(res))
    splice(markdown(res), "latency")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
