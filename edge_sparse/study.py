"""The sparsity study: accuracy x robustness x latency across sparsity levels, on the int8 artifacts
we actually ship.

In:  a target, a `BuildConfig`, a list of sparsities.
Out: `<out>/study.csv` and `study.json` (per sparsity: clean and robust accuracy for fp32 and the int8
     .tflite, params, MACs, size, host latency with LiteRT/XNNPACK, predicted target latency),
     plots (accuracy vs latency with the Pareto front, robust accuracy vs sparsity, per-eps curves),
     and `study.md` with a verdict on the claim "sparsity keeps accuracy and improves robustness".
Run: `edge-sparse study --target rpi4 --sparsity 0,0.3,0.5,0.7,0.85` (or `make study TARGET=rpi4`).

Each point is a pipeline run with a fixed sparsity, so it shares the stage cache with `make build`
(the warm-up training is done once for all points; the sparsity-0 point gets the same fine-tune epochs as
the others, so every point trained equally long).
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from edge_sparse import _io
from edge_sparse.config import BuildConfig
from edge_sparse.errors import EdgeSparseError


def _check(sparsities: Sequence[float]) -> list[float]:
    if not sparsities:
        raise EdgeSparseError("--sparsity needs at least one value, e.g. 0,0.3,0.5,0.7,0.85")
    for s in sparsities:
        if not 0 <= s < 1:
            raise EdgeSparseError(f"--sparsity {s} is outside [0, 1); 1 would remove every channel")
    return sorted(set(float(s) for s in sparsities))


def run_study(target: str, cfg: BuildConfig, sparsities: Sequence[float], out: Path, *, cache_dir="build/cache") -> list[dict]:
    from edge_sparse import pipeline
    from edge_sparse.latency import measure_tflite
    from edge_sparse.targets import load_target

    points = _check(sparsities)
    t = load_target(target)
    rows = []
    for s in points:
        print(f"study: sparsity {s:.2f}", file=sys.stderr, flush=True)
        # reference "retrain": the sparsity-0 point is fine-tuned like every other point (with "teacher" it would
        # stop at the dense epochs), so every point trained equally long
        c = dataclasses.replace(cfg, fixed_sparsity=s, enforce_parity=False, enforce_accuracy_floor=False,
                                reference="retrain")
        b = pipeline.run(target, c, out_dir=Path(out) / "bundles", cache_dir=cache_dir, until_stage="robustness")
        r = b.results
        ch = {**r["search"]["chosen"], **r["finetune"]["final"]}
        tfl = b.dirs["export"] / "model.tflite"
        host = {th: measure_tflite(tfl, threads=th, runs=300)["p50"] for th in (1, 2)}
        rob = r["robustness"]
        row = {"sparsity": s, "params": ch["params"], "macs": ch["macs"], "size_kb": round(tfl.stat().st_size / 1024, 2),
               "predicted_p90_ms": ch["predicted_p90_ms"], "fits_budget": ch["fits_latency"],
               "host_p50_ms_1t": round(host[1], 5), "host_p50_ms_2t": round(host[2], 5),
               "acc_fp32": r["verify"]["accuracy"]["torch_fp32"], "acc_int8_tflite": r["verify"]["accuracy"]["tflite_int8"],
               "int8_agreement": r["verify"]["parity"]["model.tflite"]["agreement"],
               "clean_robust_set": rob["sparse_fp32"]["clean"]["torch"]}
        for e, v in rob["sparse_fp32"]["eps"].items():
            row[f"pgd_fp32_eps{e}"] = v["pgd"]
            row[f"fgsm_fp32_eps{e}"] = v["fgsm"]
            row[f"pgd_int8_transfer_eps{e}"] = v["tflite_int8_pgd_transfer"]
        rows.append(row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _io.write_json(out / "study.json", {"target": t.name, "dataset": cfg.dataset, "model": cfg.model, "rows": rows})
    with _io.atomic_path(out / "study.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    eps = [k[len("pgd_fp32_eps"):] for k in rows[0] if k.startswith("pgd_fp32_eps")]
    _plots(rows, eps, t, out)
    _io.write_text(out / "study.md", _markdown(rows, eps, t, cfg))
    return rows


def pareto(rows: list[dict], x: str, y: str) -> list[dict]:
    """Points no other point beats on both lower x and higher y."""
    front = [r for r in rows if not any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in rows)]
    return sorted(front, key=lambda r: r[x])


def _plots(rows, eps, t, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["predicted_p90_ms"] for r in rows], [r["acc_int8_tflite"] for r in rows], label="int8 .tflite")
    for r in rows:
        ax.annotate(f"{r['sparsity']:.2f}", (r["predicted_p90_ms"], r["acc_int8_tflite"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    f = pareto(rows, "predicted_p90_ms", "acc_int8_tflite")
    ax.plot([r["predicted_p90_ms"] for r in f], [r["acc_int8_tflite"] for r in f], "k--", lw=1, label="Pareto front")
    if t.latency_budget_ms is not None:
        ax.axvline(t.latency_budget_ms, color="r", lw=1, ls=":", label=f"{t.name} budget")
    _finish(plt, fig, ax, f"predicted p90 on {t.name} (ms)", "top-1 (%)", out / "accuracy_vs_latency.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in eps:
        ax.plot([r["sparsity"] for r in rows], [r[f"pgd_fp32_eps{e}"] for r in rows], marker="o", label=f"PGD fp32 eps {e}")
        ax.plot([r["sparsity"] for r in rows], [r[f"pgd_int8_transfer_eps{e}"] for r in rows], marker="x", ls="--",
                label=f"int8 transfer eps {e}")
    _finish(plt, fig, ax, "sparsity (channel fraction removed)", "robust top-1 (%)", out / "robust_vs_sparsity.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot([0] + [float(e) for e in eps], [r["acc_fp32"]] + [r[f"pgd_fp32_eps{e}"] for e in eps], marker="o",
                label=f"sparsity {r['sparsity']:.2f}")
    _finish(plt, fig, ax, "epsilon (/255)", "PGD top-1, fp32 (%)", out / "per_eps.png")


def _finish(plt, fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(rows: list[dict], eps: list[str]) -> str:
    """True / false / mixed, with the numbers, for: sparsity keeps accuracy and improves robustness."""
    base = next((r for r in rows if r["sparsity"] == 0), rows[0])
    sparse = [r for r in rows if r["sparsity"] > 0]
    if not sparse:
        return "Only the dense point was measured: no verdict."
    keeps = [r for r in sparse if r["acc_int8_tflite"] >= base["acc_int8_tflite"] - 0.5]
    better, worse = [], []
    for r in sparse:
        for e in eps:
            d = r[f"pgd_fp32_eps{e}"] - base[f"pgd_fp32_eps{e}"]
            (better if d > 1.0 else worse if d < -1.0 else []).append((r["sparsity"], e, round(d, 1)))
    acc_claim = f"accuracy within 0.5 pt of dense at sparsities {[r['sparsity'] for r in keeps] or 'none'}"
    if better and not worse:
        rob = "true: robust accuracy rose by more than 1 pt wherever it moved: " + str(better)
        word = "TRUE" if len(keeps) == len(sparse) else "MIXED"
    elif worse and not better:
        rob = "false: robust accuracy fell by more than 1 pt: " + str(worse)
        word = "FALSE"
    elif not better and not worse:
        rob = "neither: robust accuracy moved by less than 1 pt everywhere"
        word = "MIXED"
    else:
        rob = f"mixed: up {better}, down {worse}"
        word = "MIXED"
    return f"**{word}.** Measured {acc_claim}; robustness claim {rob} (sparsity, eps, change in pt)."


def _markdown(rows, eps, t, cfg) -> str:
    cols = ["sparsity", "macs", "params", "size_kb", "predicted_p90_ms", "host_p50_ms_1t", "host_p50_ms_2t", "acc_fp32",
            "acc_int8_tflite", "int8_agreement"] + [f"pgd_fp32_eps{e}" for e in eps] + [f"pgd_int8_transfer_eps{e}" for e in eps]
    L = [f"# Sparsity study: {cfg.model} on {cfg.dataset}, target {t.name}\n",
         "Robust accuracy: PGD-10 (L∞, random start) crafted on the fp32 model; the int8 .tflite is attacked by transfer. "
         "Host latency: ai-edge-litert with XNNPACK on this machine (median).\n",
         f"Every point trained equally long: {cfg.train.epochs} warm-up epochs with the sparsity objective (shared), "
         f"pruned to its sparsity, then {cfg.finetune.epochs} fine-tune epochs at lr {cfg.finetune.lr:g}"
         f"{f', KD weight {cfg.finetune.kd_alpha:g}' if cfg.finetune.kd_alpha else ''} (sparsity 0 too).\n",
         "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        L.append("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    L += ["", "![accuracy vs latency](accuracy_vs_latency.png) ![robust vs sparsity](robust_vs_sparsity.png) ![per eps](per_eps.png)",
          "", "## Verdict", "", verdict(rows, eps), ""]
    return "\n".join(L)
