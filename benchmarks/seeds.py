"""`make seeds` / `python -m benchmarks.seeds`: the default build over several seeds, every accuracy on the
whole test split, so README and BENCHMARKS claims are means with a spread, not one run.

For each seed: `make build TARGET=<target>` with unchanged flags (resumable: the stage cache keeps finished
stages, a killed run continues). Reported per seed and as mean ± sd over seeds: shipped int8 .tflite top-1,
the dense reference's top-1 (the dense model the pruning started from and distilled from, by default), their paired difference, MACs kept,
chosen sparsity, predicted p90 and its share of the budget, build wall time. Writes
benchmarks/out/seeds-<target>.json and the "Seeds" section of BENCHMARKS.md (between markers).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def _mean_sd(v: list[float]) -> str:
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.fmean(v):.2f} ± {sd:.2f}"


def run(target: str, seeds: list[int], log=print) -> dict:
    from edge_sparse.config import BuildConfig
    from edge_sparse.pipeline import run as build

    rows = []
    for s in seeds:
        out = OUT / f"seeds-{target}" / f"seed{s}"
        t0 = time.time()
        log(f"seeds: building {target} with seed {s} ...")
        b = build(target, BuildConfig(seed=s), out_dir=out / "dist", cache_dir=ROOT / "build" / "cache")
        meta = json.loads((Path(b.results["bundle"]["path"]) / "metadata.json").read_text())
        t = meta["accuracy"]["test"]
        wall = sum(v.get("_seconds", 0) for k, v in b.results.items() if isinstance(v, dict))
        rows.append({"seed": s, "n_test": t["n"], "shipped_int8": t["tflite_int8"]["acc"],
                     "shipped_int8_ci95": t["tflite_int8"]["ci95"], "shipped_fp32": t["torch_fp32"]["acc"],
                     "dense_fp32": t["torch_fp32_dense"]["acc"], "dense_int8": t["dense_tflite_int8"]["acc"],
                     "diff_int8_vs_dense_pt": t["shipped_int8_minus_dense_fp32"]["diff_pt"],
                     "diff_ci95_pt": t["shipped_int8_minus_dense_fp32"]["ci95_pt"],
                     "int8_agreement_pct": t["int8_agreement_pct"], "macs": meta["model"]["macs"],
                     "dense_macs": meta["dense"]["macs"], "sparsity": meta["sparsity"],
                     "predicted_p90_ms": meta["latency_ms"]["predicted_p90"], "budget_ms": meta["latency_ms"]["budget"],
                     "build_seconds": round(wall, 1), "wall_this_run_s": round(time.time() - t0, 1)})
    return {"target": target, "seeds": seeds, "rows": rows, "date": time.strftime("%Y-%m-%d")}


def markdown(res: dict) -> str:
    rows = res["rows"]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    L = [f"<!-- seeds:{res['target']}:begin -->",
         f"## Seeds: default `make build TARGET={res['target']}` ({len(rows)} seeds, whole test split, `python -m benchmarks.seeds`)\n",
         "| seed | shipped int8 (%) | dense ref fp32 (%) | int8 − dense (pt, paired 95 %) | int8 agreement (%) | MACs kept | sparsity | p90 / budget | build (s) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['seed']} | {r['shipped_int8']:.2f} | {r['dense_fp32']:.2f} | {r['diff_int8_vs_dense_pt']:+.2f} "
                 f"({r['diff_ci95_pt'][0]:+.2f}…{r['diff_ci95_pt'][1]:+.2f}) | {r['int8_agreement_pct']:.2f} | "
                 f"{r['macs'] / 1e6:.2f} M of {r['dense_macs'] / 1e6:.2f} M | {r['sparsity']:.2f} | "
                 f"{r['predicted_p90_ms'] / r['budget_ms']:.0%} | {r['build_seconds']:.0f} |")
    L.append(f"| **mean ± sd** | {_mean_sd(col('shipped_int8'))} | {_mean_sd(col('dense_fp32'))} | "
             f"{_mean_sd(col('diff_int8_vs_dense_pt'))} | {_mean_sd(col('int8_agreement_pct'))} | "
             f"{_mean_sd([m / 1e6 for m in col('macs')])} M | {_mean_sd(col('sparsity'))} | | {_mean_sd(col('build_seconds'))} |")
    L.append(f"\nGoals: shipped int8 − dense reference ≥ −0.5 pt (mean over seeds); int8 agreement ≥ 99.5 % on every seed. "
             f"Measured {res['date']}.")
    L.append(f"<!-- seeds:{res['target']}:end -->")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io

    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds")
    p.add_argument("--target", default="rpi4")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {a.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
        return 2
    if len(seeds) < 1 or any(s < 0 for s in seeds):
        print(f"error: --seeds {a.seeds!r}: give one or more non-negative integers")
        return 2
    res = run(a.target, seeds)
    OUT.mkdir(parents=True, exist_ok=True)
    _io.write_json(OUT / f"seeds-{a.target}.json", res)
    md = markdown(res)
    (ROOT / "benchmarks" / f"seeds-{a.target}.md").write_text(md)
    bm = ROOT / "BENCHMARKS.md"
    text = bm.read_text() if bm.is_file() else "# Benchmarks\n"
    b, e = f"<!-- seeds:{a.target}:begin -->", f"<!-- seeds:{a.target}:end -->"
    text = re.sub(re.escape(b) + ".*?" + re.escape(e) + r"\n?", lambda _: md, text, flags=re.S) if b in text else \
        text.rstrip() + "\n\n" + md
    _io.write_text(bm, text)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
