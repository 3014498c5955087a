"""`edge-sparse latency check --target host`: the host latency table's predictions against measurements.

In:  three architectures (the default ResNet-8 at 1x28x28, the MobileNetV2-style net at 3x96x96, a
     VGG-style net at 1x28x28), `per_arch` pruned variants of each with random per-group widths on the
     channel grid (plus the dense model).
Out: per variant predicted p50/p90 and measured p50/p90 of its real int8 `.tflite` (the build's exporter:
     ONNX -> onnx2tf -> full-int8). The prediction is the search's own (grid table, interpolation, sum of
     ops + fixed cost, p90/p50 read off probes of similar length) from a table whose probes are timed in the same
     interleaved run as the variants: this shared machine's speed drifts by up to ~20 % over hours, and
     a table probed yesterday against models timed today measures that drift, not the predictor. Beside
     it: the share within ±10 %, median |error|, the misses; the *relative* error (predicted speedup over
     the dense model vs measured, what a relative budget such as "2x" depends on); the *noise floor* (the
     whole run repeated right after: how often the machine agrees with itself within ±10 %); and the
     error of the *cached* table in build/latency/ that builds price with (how far the machine has
     drifted since it was probed; `edge-sparse profile --target host --refresh` re-probes it).
Run: cached in build/latency/check/ (exports per variant, the probe suite), so a re-run only re-times (~3 min).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edge_sparse import _io, models
from edge_sparse.allocate import Allocator
from edge_sparse.latency.ops import extract_ops
from edge_sparse.latency.predict import resolve
from edge_sparse.targets import load_target

ARCHS = (("resnet8", (1, 28, 28)), ("mobilenetv2", (3, 96, 96)), ("vgg_small", (1, 28, 28)))


def _model(name: str, shape) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vgg_small":  # VGGSmall's own default stages (32, 32, M, 64, 64, M, 128, 128)
        m = models.VGGSmall(in_channels=shape[0], num_classes=10, input_size=shape[1])
    else:
        m = models.create(name, in_channels=shape[0], num_classes=10, input_size=shape[1])
    for mod in m.modules():  # non-trivial BN statistics, so importance orders differ between groups
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.1, 1.0)
    return m.eval()


def _export(model: torch.nn.Module, shape, out: Path) -> Path:
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    if (out / "model.tflite").is_file():
        return out / "model.tflite"
    with _io.atomic_dir(out) as tmp:
        calib = np.random.default_rng(0).standard_normal((16, shape[1], shape[2], shape[0])).astype(np.float32)
        eonnx.export_fp32(model, shape, tmp / "m.onnx")
        etflite.export(tmp / "m.onnx", calib, None, tmp / "model.tflite")
        (tmp / "m.onnx").unlink()
    return out / "model.tflite"


def run(target: str = "host", per_arch: int = 10, seed: int = 0, cache: Path | str = "build/latency/check",
        log=print, archs=ARCHS, runs: int = 1000, table_dir: Path | str = "build/latency") -> dict:
    from edge_sparse.latency import measure_many, probes
    from edge_sparse.latency.host import provenance
    from edge_sparse.latency.table import LatencyTable, grid_ops

    t = load_target(target)
    cache = Path(cache)
    rng = random.Random(seed)
    rows, paths, row_ops, need = [], [], [], {}
    for name, shape in archs:
        dense = _model(name, shape)
        ex = torch.zeros(1, *shape)
        pr = resolve(t, dense, ex, log=log, cache_dir=table_dir)  # the cached table a build would price with
        dense_ops = extract_ops(dense, ex)
        for o in grid_ops(dense_ops, t.channel_multiple, fixed_in=shape[0], fixed_out=dense_ops[-1].cout):
            need.setdefault(o.key, o)
        al = Allocator(dense, ex, pr, t.channel_multiple)
        variants = [{g.name: g.size for g in al.groups}]
        for _ in range(per_arch):
            variants.append({g.name: rng.choice(range(g.min_keep, g.size + 1, t.channel_multiple)) for g in al.groups})
        for i, keep in enumerate(variants):
            model = al._pruned(keep)
            model.__dict__.pop("_edge_sparse_dg", None)
            tag = hashlib.sha256(json.dumps([name, shape, sorted(keep.items())]).encode()).hexdigest()[:12]
            log(f"  {name} variant {i}: exporting ({tag}) ..." if not (cache / tag / "model.tflite").is_file() else
                f"  {name} variant {i}: cached export {tag}")
            paths.append(_export(model, shape, cache / tag))
            ops = extract_ops(model, ex)
            row_ops.append(ops)
            p = pr.predict_ops(ops)
            rows.append({"arch": name, "input": list(shape), "variant": i, "keep": keep, "tag": tag,
                         "macs": sum(int(o.macs) for o in ops), "cached_p50": p["p50"], "cached_p90": p["p90"]})
    # The table under test is probed in the same interleaved run as the models it predicts: on a shared
    # machine whose speed drifts by tens of percent over hours, a table probed yesterday and models timed
    # today would measure the drift, not the predictor (the cached table's error is reported beside it).
    suite_dir, suite = probes.cached_suite(need.values(), cache, log=lambda m: log(f"  {m}"))
    probe_paths = [suite_dir / p["file"] for p in suite["probes"]]
    log(f"  timing {len(probe_paths)} probes and {len(paths)} models side by side ({runs} invokes each, "
        f"{t.threads} thread(s)), twice ...")
    timed = [measure_many(probe_paths + paths, threads=t.threads, runs=runs, rounds=100) for _ in range(2)]
    prov = provenance(t.threads, "latency check: probes timed in the same interleaved run as the models")
    n = len(probe_paths)
    table = LatencyTable.from_timings(suite, {"timings": {p["name"]: m for p, m in zip(suite["probes"], timed[0])}}, prov)
    for r, ops, m, m2 in zip(rows, row_ops, timed[0][n:], timed[1][n:]):
        p = table.predict(ops)
        r["pred_p50"], r["pred_p90"] = round(p["p50"], 5), round(p["p90"], 5)
        r["meas_p50"], r["meas_p90"] = m["p50"], m["p90"]
        r["again_p50"], r["again_p90"] = m2["p50"], m2["p90"]
        for q in ("p50", "p90"):
            r[f"err_{q}"] = r[f"pred_{q}"] / r[f"meas_{q}"] - 1
            r[f"cached_err_{q}"] = r[f"cached_{q}"] / r[f"meas_{q}"] - 1
    dense = {r["arch"]: r for r in rows if r["variant"] == 0}
    for r in rows:
        if r["variant"] > 0:  # predicted speedup over the dense model vs measured, side by side
            d = dense[r["arch"]]
            for q in ("p50", "p90"):
                r[f"rel_err_{q}"] = (r[f"pred_{q}"] / d[f"pred_{q}"]) / (r[f"meas_{q}"] / d[f"meas_{q}"]) - 1
                r[f"cached_rel_err_{q}"] = (r[f"cached_{q}"] / d[f"cached_{q}"]) / (r[f"meas_{q}"] / d[f"meas_{q}"]) - 1
    res = summarize(rows, t)
    res["table_probed"] = {"in_run": len(probe_paths), "cached": str(table_dir),
                           "cached_date": pr.provenance.get("date")}
    return res


def summarize(rows: list[dict], t) -> dict:
    from edge_sparse.latency.host import cpu_facts, runtime_version

    return {"target": t.name, "threads": t.threads, "cpu": cpu_facts(), "runtime": runtime_version(), "n": len(rows),
            "p90": _stats([r["err_p90"] for r in rows]), "p50": _stats([r["err_p50"] for r in rows]),
            "relative": {q: _stats([r[f"rel_err_{q}"] for r in rows if f"rel_err_{q}" in r]) for q in ("p50", "p90")},
            "noise_floor": {q: _stats([r[f"again_{q}"] / r[f"meas_{q}"] - 1 for r in rows if f"again_{q}" in r])
                            for q in ("p50", "p90")},
            "cached": {q: _stats([r[f"cached_err_{q}"] for r in rows if f"cached_err_{q}" in r]) for q in ("p50", "p90")},
            "cached_relative": {q: _stats([r[f"cached_rel_err_{q}"] for r in rows if f"cached_rel_err_{q}" in r])
                                for q in ("p50", "p90")},
            "misses": [r for r in rows if abs(r["err_p90"]) > 0.10], "rows": rows}


def _stats(errs: list[float]) -> dict:
    if not errs:
        return {"n": 0}
    e = np.abs(errs)
    return {"n": len(e), "within_10pct": float((e <= 0.10).mean()), "median_abs_err": float(np.median(e)),
            "max_abs_err": float(e.max())}


def format_report(res: dict) -> str:
    L = [f"Host latency table vs measurement: {res['n']} models ({', '.join(sorted({r['arch'] for r in res['rows']}))}), "
         f"{res['cpu']['cpu']} ({', '.join(res['cpu']['isa'])}), {res['runtime']}, {res['threads']} thread(s)"]
    for q in ("p90", "p50"):
        s = res[q]
        L.append(f"  {q}: {s['within_10pct']:.0%} within ±10 %, median |error| {s['median_abs_err']:.1%}, "
                 f"worst {s['max_abs_err']:.1%}")
    for name, what in (("relative", "predicted vs measured speedup over the dense model (same run)"),
                       ("noise_floor", "the same models timed twice in a row (how far the machine moves)"),
                       ("cached", f"with the cached table a build prices with (probed "
                                  f"{res.get('table_probed', {}).get('cached_date', '?')})"),
                       ("cached_relative", "speedup over the dense model, cached table")):
        for q, st in res.get(name, {}).items():
            if st.get("n"):
                L.append(f"  {q} {what}: {st['within_10pct']:.0%} within ±10 %, median |diff| "
                         f"{st['median_abs_err']:.1%}, worst {st['max_abs_err']:.1%}")
    by = {}
    for r in res["rows"]:
        by.setdefault(r["arch"], []).append(abs(r["err_p90"]))
    for a, v in by.items():
        L.append(f"  {a}: median |p90 error| {np.median(v):.1%}, {np.mean(np.array(v) <= 0.1):.0%} within ±10 %")
    for r in res["misses"]:
        L.append(f"  miss: {r['arch']} variant {r['variant']}: predicted p90 {r['pred_p90']:.4f} ms, measured "
                 f"{r['meas_p90']:.4f} ms ({r['err_p90']:+.1%}); p50 {r['pred_p50']:.4f} vs {r['meas_p50']:.4f}")
    return "\n".join(L)


def main(target: str, per_arch: int, out: Optional[str], log=print) -> dict:
    res = run(target, per_arch=per_arch, log=log)
    if out:
        _io.write_json(Path(out), res)
    print(format_report(res))
    return res
