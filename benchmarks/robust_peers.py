"""`python -m benchmarks.robust_peers`: robustness at equal latency — the shipped (pruned) model against the
width-multiplier peer of `make compare` at the same budget, the control the seed's claim ("sparsity improves
robustness") needs: a narrow dense network of the same latency, not the wide dense one.

For each seed whose `make compare` width point exists (benchmarks/out/compare/<budget>/seed<k>/width/net), on
the first `--n` test images (the same images for both models, so differences are paired): clean accuracy and
robust accuracy under the study's PGD and AutoAttack's APGD-CE (`torchattacks`) at each eps (of 255), white-box
on the torch fp32 model, and the same adversarial images replayed on that model's int8 .tflite. The difference
shipped − width is taken per seed; its 95 % interval is Student's t over seeds (study.interval), and a verdict
says "shipped more robust" / "less robust" only where the interval excludes zero.

Each finished (seed, model) is written to benchmarks/robust_peers.json at once and not re-run (resumable);
`--write` splices the table into BENCHMARKS.md.

    python -m benchmarks.robust_peers --budget rpi4 --seeds 0,1,2 --write
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import publish

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "robust_peers.json"
TAG = "robust-peers"
ATTACKS = ("pgd", "apgd-ce")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _measure(model, tflite: Path, x, y, mean, std, eps: list[float], steps: int, seed: int) -> dict:
    from edge_sparse import verify
    from edge_sparse.data import ImageSet
    from edge_sparse.study import attack_correct
    from edge_sparse.train import predict

    res = {"clean_fp32": float((predict(model, ImageSet(x, y), mean, std).argmax(1) == y).mean() * 100),
           "clean_int8": float((verify.run_tflite(tflite, x, mean, std).argmax(1) == y).mean() * 100)}
    for a in ATTACKS:
        for e in eps:
            t0 = time.time()
            fp32, int8 = attack_correct(model, tflite, x, y, a, e, steps, mean, std, seed)
            res[f"{a}_fp32_eps{e:g}"], res[f"{a}_int8_eps{e:g}"] = float(fp32.mean() * 100), float(int8.mean() * 100)
            _log(f"  {a} eps {e:g}: fp32 {res[f'{a}_fp32_eps{e:g}']:.2f} %, int8 {res[f'{a}_int8_eps{e:g}']:.2f} % "
                 f"({time.time() - t0:.0f} s)")
    return res


def run(budget: str, seeds: list[int], n: int, eps: list[float], steps: int, rows: list[dict], save) -> None:
    from edge_sparse import models, pipeline
    from edge_sparse.config import BuildConfig

    from benchmarks.compare import OUT as COMPARE_OUT, _target_name, width_net

    for seed in seeds:
        work = COMPARE_OUT / budget.replace(":", "-") / f"seed{seed}"
        width_dir = work / "width"
        if not (width_dir / "net" / "model.safetensors").is_file() or not (width_dir / "model.tflite").is_file():
            _log(f"robust_peers {budget} seed {seed}: no width point in {width_dir} (run `make compare` first); skipped")
            continue
        settings = {"budget": budget, "n": n, "eps": eps, "steps": steps}
        cfg = dataclasses.replace(BuildConfig(seed=seed), enforce_parity=False, enforce_accuracy_floor=False)
        b = None
        for method in ("shipped", "width"):
            if any(r["seed"] == seed and r["method"] == method and r["settings"] == settings for r in rows):
                continue
            if b is None:
                b = pipeline.run(_target_name(budget), cfg, out_dir=work / "dist", cache_dir=ROOT / "build" / "cache",
                                 until_stage="verify")
            s = b.splits
            x, y = s.test.images(np.arange(min(n, len(s.test)))), s.test.y[: min(n, len(s.test))]
            if method == "shipped":
                model, _ = models.load(b.dirs["finetune"] / "model")
                tfl = b.dirs["export"] / "model.tflite"
            else:
                model = width_net(b, width_dir)
                tfl = width_dir / "model.tflite"
            _log(f"robust_peers {budget} seed {seed}: {method} on {len(y)} images")
            rows.append({"seed": seed, "method": method, "settings": settings,
                         "params": int(sum(p.numel() for p in model.parameters())),
                         **_measure(model.eval(), tfl, x, y, s.mean, s.std, eps, steps, seed)})
            save()


def summarize(rows: list[dict], eps: list[float]) -> list[dict]:
    from edge_sparse.study import interval, metric_names

    keys = ["clean_fp32", "clean_int8"] + metric_names(ATTACKS, eps)
    by = {(r["seed"], r["method"]): r for r in rows}
    seeds = sorted({s for s, m in by if (s, "shipped") in by and (s, "width") in by})
    out = []
    for k in keys:
        if not seeds or k not in by[(seeds[0], "shipped")]:
            continue
        sh = [by[(s, "shipped")][k] for s in seeds]
        wd = [by[(s, "width")][k] for s in seeds]
        m, lo, hi = interval([a - b for a, b in zip(sh, wd)])
        word = ("shipped more robust" if lo > 0 else "shipped less robust" if hi < 0 else "no detectable difference") \
            if len(seeds) >= 2 else "one seed: no interval"
        out.append({"metric": k, "seeds": seeds, "shipped": sh, "width": wd, "diff": m, "lo": lo, "hi": hi, "verdict": word})
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    s0 = rows[0]["settings"] if rows else {}
    L = [f"<!-- {TAG}:begin -->", "## Robustness at equal latency (`python -m benchmarks.robust_peers`)", "",
         f"The shipped model against `make compare`'s width-multiplier peer (a narrow dense ResNet-8 trained from scratch "
         f"at the same {s0.get('budget')} budget), on the first {s0.get('n')} test images, PGD and APGD-CE "
         f"({s0.get('steps')} steps) white-box on the fp32 model, the same images replayed on each model's int8 .tflite. "
         f"Accuracy in %, mean over seeds; shipped − width with a 95 % t interval over seeds.", "",
         "| metric | shipped | width | shipped − width (pt) | 95 % interval | verdict |", "|---|---:|---:|---:|---|---|"]
    for r in summary:
        L.append(f"| {r['metric']} | {np.mean(r['shipped']):.2f} | {np.mean(r['width']):.2f} | {r['diff']:+.2f} | "
                 f"{r['lo']:+.2f} … {r['hi']:+.2f} | {r['verdict']} |")
    if summary:
        L.append(f"\nSeeds {', '.join(map(str, summary[0]['seeds']))}; measured {time.strftime('%Y-%m-%d')}; "
                 f"benchmarks/robust_peers.json.")
    L.append(f"<!-- {TAG}:end -->")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    import json

    from edge_sparse import _io
    from edge_sparse.robustness import check_eps
    from edge_sparse.study import parse_seeds

    ap = argparse.ArgumentParser(prog="python -m benchmarks.robust_peers")
    ap.add_argument("--budget", default="rpi4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=2000, help="test images attacked (default 2000)")
    ap.add_argument("--eps", default="2,8", help="L-inf radii in 1/255 (default 2,8)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    eps = [float(e) for e in a.eps.split(",") if e.strip()]
    for e in eps:
        check_eps(e)
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    run(a.budget, parse_seeds(a.seeds), a.n, eps, a.steps, rows, lambda: _io.write_json(OUT, rows))
    settings = {"budget": a.budget, "n": a.n, "eps": eps, "steps": a.steps}
    mine = [r for r in rows if r["settings"] == settings]
    summary = summarize(mine, eps)
    return publish(markdown(mine, summary), TAG, a.write)


if __name__ == "__main__":
    raise SystemExit(main())
