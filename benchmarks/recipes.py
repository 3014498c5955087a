"""`python -m benchmarks.recipes`: training recipes of the default build, compared on the whole test split.

Each recipe is a set of `edge-sparse build` flags (the defaults otherwise); each (recipe, seed) point is a real
build through `verify` (int8 export and the whole-test-split accuracies with 95 % intervals), in the shared stage
cache, so recipes that share a stage (the same dense training) share its work and an interrupted run resumes.
Every finished point is appended to benchmarks/recipes.json at once; a point already there is not re-run.

    python -m benchmarks.recipes --recipes teacher-kd,early --seeds 0,1
    python -m benchmarks.recipes --list
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "recipes.json"  # committed: the table in BENCHMARKS.md is made from it

def _teacher(lam: str, ft_epochs: str = "9", ft_lr: str = "0.05", kd: str = "0.8") -> list[str]:
    """Flags of a teacher-first recipe: 9 one-cycle dense epochs with L1 on BN `lam`, the dense model the reference
    and the teacher, then `ft_epochs` fine-tune epochs at `ft_lr` distilling with weight `kd`."""
    return ["--epochs", "9", "--finetune-epochs", ft_epochs, "--finetune-lr", ft_lr, "--kd-alpha", kd,
            "--schedule", "onecycle", "--reference", "teacher", "--sparsity-lambda", lam]


_CROP_FLIP = {"train": {"augment": "crop_flip"}, "finetune": {"augment": "crop_flip"}}  # the pre-2026-12-02 augmentation

# name -> (what it is, the build flags[, {"train"|"finetune": TrainConfig fields the CLI has no flag for}])
RECIPES: dict[str, tuple] = {
    "default": ("the default build, unchanged flags (since 2026-12-02 evening: `default-kd0-ftlr1`)", []),
    "distil-0.8": ("the default until 2026-12-02 evening: the fine-tune distils from the dense model (alpha 0.8, T 4) at "
                   "lr 0.05 (= teacher-kd-l2e3-noaug-all)", ["--kd-alpha", "0.8", "--finetune-lr", "0.05"]),
    "default-kd0": ("distil-0.8, the fine-tune on labels alone (no distillation; Torch-Pruning's recipe fine-tunes "
                    "so)", ["--kd-alpha", "0", "--finetune-lr", "0.05"]),
    "default-kd05": ("distil-0.8 with distillation weight 0.5 instead of 0.8", ["--kd-alpha", "0.5", "--finetune-lr", "0.05"]),
    "default-ftlr1": ("distil-0.8, the fine-tune at the dense peak rate (one-cycle lr 0.1)", ["--kd-alpha", "0.8", "--finetune-lr", "0.1"]),
    "default-kd0-ftlr1": ("distil-0.8, the fine-tune on labels alone at the dense peak rate (one-cycle lr 0.1)",
                          ["--kd-alpha", "0", "--finetune-lr", "0.1"]),
    "default-l5e4": ("distil-0.8 with the weaker sparsity term (L1 on BN 5e-4)", ["--sparsity-lambda", "5e-4", "--kd-alpha", "0.8", "--finetune-lr", "0.05"]),
    "noreg-l2": ("the default without the sparsity term in the dense epochs (--sparsity-lambda 0), channels ranked by "
                 "their group's L2 magnitude (Torch-Pruning's importance) and allocated per group under the budget",
                 ["--sparsity-lambda", "0", "--criterion", "l2"]),
    "early": ("3 warm-up epochs with L1 on BN -> prune -> 6 fine-tune epochs (lr 0.05, cosine, no KD, crop+flip); "
              "reference: the warm-up model given the 6 epochs too (the default until 2026-12-02)",
              ["--epochs", "3", "--finetune-epochs", "6", "--finetune-lr", "0.05", "--kd-alpha", "0",
               "--schedule", "cosine", "--reference", "retrain", "--sparsity-lambda", "2e-3"], _CROP_FLIP),
    "teacher-kd": ("9 dense epochs (one-cycle, lr 0.1, L1 on BN 5e-4, crop+flip) = reference and teacher -> prune -> "
                   "9 fine-tune epochs distilling from it (one-cycle lr 0.05, alpha 0.8, T 4, crop+flip)",
                   _teacher("5e-4"), _CROP_FLIP),
    "teacher-nokd": ("teacher-kd without distillation (the pruned model fine-tuned on labels alone)",
                     _teacher("5e-4", kd="0"), _CROP_FLIP),
    "teacher-kd-6": ("teacher-kd with 6 fine-tune epochs",
                     _teacher("5e-4", ft_epochs="6"), _CROP_FLIP),
    "teacher-kd-l2e3": ("teacher-kd with the stronger sparsity term (L1 on BN 2e-3)",
                        _teacher("2e-3"), _CROP_FLIP),
    "teacher-kd-l2e3-noaug": ("teacher-kd-l2e3, the fine-tune without augmentation (the small model underfits: "
                              "its train accuracy under crop+flip stays below its validation accuracy)",
                              _teacher("2e-3"),
                              {"train": {"augment": "crop_flip"}, "finetune": {"augment": "none"}}),
    "teacher-kd-l2e3-wd5": ("teacher-kd-l2e3, the fine-tune with weight decay 5e-5 instead of 5e-4",
                            _teacher("2e-3"),
                            {"train": {"augment": "crop_flip"}, "finetune": {"augment": "crop_flip", "weight_decay": 5e-5}}),
    "teacher-kd-l2e3-noaug-all": ("teacher-kd-l2e3 with no augmentation in the dense training either",
                                  _teacher("2e-3"),
                                  {"train": {"augment": "none"}, "finetune": {"augment": "none"}}),
    "teacher-kd-noaug-all": ("teacher-kd (L1 on BN 5e-4) with no augmentation in either training",
                             _teacher("5e-4"),
                             {"train": {"augment": "none"}, "finetune": {"augment": "none"}}),
    "teacher-kd-l2e3-lr1": ("teacher-kd-l2e3 with the fine-tune at the dense peak rate (one-cycle lr 0.1)",
                            _teacher("2e-3", ft_lr="0.1"), _CROP_FLIP),
}


def _point(name: str, seed: int, target: str) -> dict:
    from edge_sparse.cli import _build_args, _config
    from edge_sparse.pipeline import run

    p = argparse.ArgumentParser()
    _build_args(p)
    a = p.parse_args(["--target", target, "--seed", str(seed), *RECIPES[name][1]])
    # gates measured, not enforced: a recipe whose int8 parity misses the gate is still a data point (its agreement is listed)
    cfg = dataclasses.replace(_config(a), enforce_parity=False, enforce_accuracy_floor=False)
    over = RECIPES[name][2] if len(RECIPES[name]) > 2 else {}
    cfg = dataclasses.replace(cfg, train=cfg.train.replace(**over.get("train", {})),
                              finetune=cfg.finetune.replace(**over.get("finetune", {})))
    t0 = time.time()
    b = run(target, cfg, out_dir=ROOT / "benchmarks" / "out" / "recipes-dist", cache_dir=ROOT / "build" / "cache",
            until_stage="verify")
    t = b.results["verify"]["accuracy"]["test"]
    fin = b.results["finetune"]["final"]
    secs = {s: round(b.results[s].get("_seconds", 0.0), 1) for s in ("train", "search", "finetune", "reference", "export", "verify")}
    return {"recipe": name, "seed": seed, "target": target, "flags": RECIPES[name][1],
            "overrides": RECIPES[name][2] if len(RECIPES[name]) > 2 else {}, "n_test": t["n"],
            "shipped_int8": t["tflite_int8"]["acc"], "shipped_int8_ci95": t["tflite_int8"]["ci95"],
            "shipped_fp32": t["torch_fp32"]["acc"], "dense_fp32": t["torch_fp32_dense"]["acc"],
            "diff_int8_vs_dense_pt": t["shipped_int8_minus_dense_fp32"]["diff_pt"],
            "diff_ci95_pt": t["shipped_int8_minus_dense_fp32"]["ci95_pt"],
            "int8_agreement_pct": t["int8_agreement_pct"], "macs": fin["macs"], "sparsity": fin["sparsity"],
            "predicted_p90_ms": fin["predicted_p90_ms"], "stage_seconds": secs,
            "train_seconds": round(sum(secs.values()), 1), "wall_s": round(time.time() - t0, 1)}


def _mean_sd(v: list[float]) -> str:
    return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}" if v else "–"


def markdown(rows: list[dict]) -> str:
    L = ["<!-- recipes:begin -->", "## Training recipes (`python -m benchmarks.recipes`, whole test split)\n",
         "| recipe | seeds | shipped int8 (%) | dense reference fp32 (%) | int8 − dense (pt) | int8/fp32 agreement (%) | MACs | "
         "stage time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == name]
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        diff = (f"{rs[0]['diff_int8_vs_dense_pt']:+.2f} ({rs[0]['diff_ci95_pt'][0]:+.2f}…{rs[0]['diff_ci95_pt'][1]:+.2f})"
                if len(rs) == 1 else _mean_sd(col("diff_int8_vs_dense_pt")))
        L.append(f"| `{name}` | {','.join(str(r['seed']) for r in rs)} | {_mean_sd(col('shipped_int8'))} | "
                 f"{_mean_sd(col('dense_fp32'))} | {diff} | "
                 f"{_mean_sd(col('int8_agreement_pct'))} | {_mean_sd([m / 1e6 for m in col('macs')])} M | "
                 f"{_mean_sd(col('train_seconds'))} |")
    L.append("\nmean ± sd over the seeds listed (one seed: sd 0, and int8 − dense with its paired 95 % interval); every "
             "point in benchmarks/recipes.json. Stage time: train through verify, seconds; some rows ran beside other "
             "jobs on this 2-core host, so compare times only within a row's own build. Recipes:\n")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        L.append(f"- `{name}`: {RECIPES[name][0] if name in RECIPES else '(removed)'}")
    L.append("<!-- recipes:end -->")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io
    from edge_sparse.errors import EdgeSparseError

    p = argparse.ArgumentParser(prog="python -m benchmarks.recipes")
    p.add_argument("--recipes", default="default")
    p.add_argument("--seeds", default="0")
    p.add_argument("--target", default="rpi4")
    p.add_argument("--list", action="store_true")
    p.add_argument("--write", action="store_true", help="splice the table into BENCHMARKS.md")
    a = p.parse_args(argv)
    if a.list:
        for k, (what, flags, *over) in RECIPES.items():
            print(f"{k:<22} {what}\n{'':<22} {' '.join(flags)} {over[0] if over else ''}")
        return 0
    names = [n for n in a.recipes.split(",") if n]
    bad = [n for n in names if n not in RECIPES]
    if bad or not names:
        print(f"error: --recipes: unknown {', '.join(bad) or '(none given)'}; valid: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {a.seeds!r}: expected comma-separated integers, e.g. 0,1,2", file=sys.stderr)
        return 2
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    for name in names:
        for s in seeds:
            if any(r["recipe"] == name and r["seed"] == s and r["target"] == a.target for r in rows):
                continue
            print(f"recipes: {name}, seed {s} ...", file=sys.stderr, flush=True)
            try:
                rows.append(_point(name, s, a.target))
            except EdgeSparseError as e:
                print(f"recipes: {name}, seed {s}: {e}", file=sys.stderr)
                continue
            OUT.parent.mkdir(parents=True, exist_ok=True)
            _io.write_json(OUT, rows)
            r = rows[-1]
            print(f"recipes: {name} seed {s}: int8 {r['shipped_int8']:.2f} %, dense {r['dense_fp32']:.2f} %, "
                  f"diff {r['diff_int8_vs_dense_pt']:+.2f} pt, {r['macs'] / 1e6:.2f} M MACs, {r['train_seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    md = markdown([r for r in rows if r["target"] == a.target and r["recipe"] in names])
    print(md)
    if a.write:
        from benchmarks import splice

        splice(markdown([r for r in rows if r["target"] == a.target]), "recipes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
