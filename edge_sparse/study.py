"""The sparsity study: accuracy x robustness x latency across sparsity levels and seeds, on the int8 artifacts
we actually ship, with intervals that say whether a difference is there at all.

In:  a target, a `BuildConfig`, sparsities, seeds, attacks (PGD-k ours, APGD-CE from torchattacks), epsilons.
Out: `<out>/points/*.json` (one per sparsity x seed, written as it finishes: an interrupted study resumes per
     point), `study.json` (every point with its per-image correctness bits, the summary and the verdict: the
     verdict is recomputed from it by `verdict(summarize(rows, ...))`), `study.csv` (the summary), plots and
     `study.md` (tables and a verdict on "sparsity keeps accuracy and improves robustness").
Run: `edge-sparse study --target rpi4 --sparsity 0,0.3,0.5,0.7 --seeds 0,1,2` (or `make study TARGET=rpi4`).

Each point is a pipeline run at a fixed sparsity through `verify`, so it shares the stage cache with `make build`
(the dense training is done once per seed for all points; the sparsity-0 point gets the same fine-tune epochs as
the others, so every point trained equally long). Clean accuracy comes from the whole test split; robust accuracy
from the first `robust_n` test images (the same images for every point, so differences are paired). A difference
against the dense point is taken per seed and its 95 % interval is Student's t over seeds (one seed: a paired
normal interval over images); "improves" / "hurts" only where the interval excludes zero.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_sparse import _io
from edge_sparse.config import BuildConfig
from edge_sparse.errors import EdgeSparseError

STUDY_ATTACKS = ("pgd", "apgd-ce")
STUDY_VERSION = 2  # bump when a point's numbers would change for the same settings (its file is then recomputed)
KEEP_PT = 0.5  # "keeps accuracy": clean int8 top-1 within this many points of dense (mean over seeds)


def _check(sparsities: Sequence[float]) -> list[float]:
    if not sparsities:
        raise EdgeSparseError("--sparsity needs at least one value, e.g. 0,0.3,0.5,0.7,0.85")
    for s in sparsities:
        if not 0 <= s < 1:
            raise EdgeSparseError(f"--sparsity {s} is outside [0, 1); 1 would remove every channel")
    return sorted(set(float(s) for s in sparsities))


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything but non-negative integers is refused, naming the bad item."""
    seeds = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) >= 2**32:
            raise EdgeSparseError(f"--seeds: {item!r} is not a seed (non-negative integers below 2**32), e.g. 0,1,2")
        seeds.append(int(item))
    if not seeds:
        raise EdgeSparseError("--seeds needs at least one integer, e.g. 0,1,2")
    return sorted(set(seeds))


def check_attacks(attacks: Sequence[str]) -> list[str]:
    attacks = [a.strip() for a in attacks if a.strip()]
    if not attacks:
        raise EdgeSparseError(f"--attacks needs at least one of {', '.join(STUDY_ATTACKS)}")
    for a in attacks:
        if a not in STUDY_ATTACKS:
            raise EdgeSparseError(f"--attacks: unknown attack {a!r}; valid: {', '.join(STUDY_ATTACKS)}")
    return [a for a in STUDY_ATTACKS if a in attacks]  # one canonical order: a resumed study compares equal lists


def check_eps_list(eps: Sequence[float]) -> list[float]:
    if not eps:
        raise EdgeSparseError("--eps needs at least one epsilon in (0, 255] (pixel units /255), e.g. 2,8")
    for e in eps:
        if not 0 < e <= 255:
            raise EdgeSparseError(f"--eps {e:g} is outside (0, 255] (pixel units /255)")
    return sorted(set(float(e) for e in eps))


def _pack(correct: np.ndarray) -> str:
    return base64.b64encode(np.packbits(correct.astype(bool)).tobytes()).decode()


def _unpack(bits: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8))[:n].astype(bool)


def metric_names(attacks: Sequence[str], eps: Sequence[float]) -> list[str]:
    """Robust metrics of a point: `<attack>_fp32_eps<e>` (white-box on the fp32 model) and
    `<attack>_int8_eps<e>` (the same adversarial images on the int8 .tflite: transfer)."""
    return [f"{a}_{m}_eps{e:g}" for a in attacks for e in eps for m in ("fp32", "int8")]


def attack_correct(model, tflite: Path, x: np.ndarray, y: np.ndarray, attack: str, eps: float, steps: int, mean, std,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One attack at one radius (of 255) on uint8 images `x`, crafted white-box on the fp32 `model` and replayed on its
    int8 `tflite`: per image, whether each of the two still classifies it correctly (fp32, int8)."""
    from edge_sparse import verify
    from edge_sparse.data import ImageSet
    from edge_sparse.robustness import attack_uint8
    from edge_sparse.train import predict

    adv = attack_uint8(model, x, y, eps=eps, attack=attack, steps=steps, mean=mean, std=std, seed=seed)
    return (predict(model, ImageSet(adv, y), mean, std).argmax(1) == y,
            verify.run_tflite(tflite, adv, mean, std).argmax(1) == y)


def _point(target: str, cfg: BuildConfig, s: float, seed: int, settings: dict, out: Path, cache_dir) -> dict:
    from edge_sparse import models, pipeline
    from edge_sparse.data import ImageSet
    from edge_sparse.latency import measure_tflite
    from edge_sparse.train import predict

    # reference "retrain": the sparsity-0 point is fine-tuned like every other point (with "teacher" it would stop at
    # the dense epochs), so every point trained equally long
    c = dataclasses.replace(cfg, seed=seed, fixed_sparsity=s, enforce_parity=False, enforce_accuracy_floor=False,
                            reference="retrain")
    b = pipeline.run(target, c, out_dir=out / "bundles", cache_dir=cache_dir, until_stage="verify")
    r = b.results
    ch = {**r["search"]["chosen"], **r["finetune"]["final"]}
    tfl = b.dirs["export"] / "model.tflite"
    model, _ = models.load(b.dirs["finetune"] / "model")
    mean, std = b.splits.mean, b.splits.std
    n = min(settings["robust_n"], len(b.splits.test))
    idx = np.arange(n)  # the same images for every point and seed: paired differences
    x, y = b.splits.test.images(idx), b.splits.test.y[idx]
    correct = {}
    clean_robust_set = float((predict(model, ImageSet(x, y), mean, std).argmax(1) == y).mean() * 100)
    for a in settings["attacks"]:
        for e in settings["eps"]:
            print(f"study: sparsity {s:g} seed {seed}: {a} eps {e:g} on {n} images", file=sys.stderr, flush=True)
            correct[f"{a}_fp32_eps{e:g}"], correct[f"{a}_int8_eps{e:g}"] = attack_correct(
                model, tfl, x, y, a, e, settings["steps"], mean, std, seed)
    test = r["verify"]["accuracy"]["test"]
    return {"sparsity": s, "seed": seed, "settings": settings, "params": ch["params"], "macs": ch["macs"],
            "size_kb": round(tfl.stat().st_size / 1024, 2), "predicted_p90_ms": ch["predicted_p90_ms"],
            "host_p50_ms_1t": round(measure_tflite(tfl, threads=1, runs=300)["p50"], 5),
            "test_n": test["n"], "acc_fp32": test["torch_fp32"]["acc"], "acc_int8": test["tflite_int8"]["acc"],
            "int8_agreement": test["int8_agreement_pct"], "robust_n": n, "clean_fp32_robust_set": clean_robust_set,
            "robust": {k: round(float(v.mean() * 100), 3) for k, v in correct.items()},
            "correct": {k: _pack(v) for k, v in correct.items()}}


def run_study(target: str, cfg: BuildConfig, sparsities: Sequence[float], out: Path, *, seeds: Sequence[int] = (0,),
              attacks: Sequence[str] = STUDY_ATTACKS, eps: Sequence[float] = (2.0, 8.0), robust_n: int = 2000,
              steps: int = 10, cache_dir="build/cache") -> dict:
    from edge_sparse.targets import load_target

    points, seeds = _check(sparsities), sorted(set(int(s) for s in seeds))
    attacks, eps = check_attacks(attacks), check_eps_list(eps)
    if robust_n < 1 or steps < 1:
        raise EdgeSparseError(f"--robust-n and --steps must be >= 1, got {robust_n} and {steps}")
    if 0.0 not in points:
        raise EdgeSparseError("--sparsity must include 0: every difference is taken against the dense point")
    if not seeds:
        raise EdgeSparseError("--seeds needs at least one integer, e.g. 0,1,2")
    t = load_target(target)
    out = Path(out)
    # everything a finished point depends on besides its sparsity and seed: a point made under other settings, by an
    # older version of the study, or for another target/model/data/recipe is recomputed, never mixed in
    settings = {"version": STUDY_VERSION, "attacks": attacks, "eps": eps, "robust_n": robust_n, "steps": steps,
                "target": t.name, "model": cfg.model, "dataset": cfg.dataset, "data_dir": cfg.data_dir,
                "limit_train": cfg.limit_train, "limit_eval": cfg.limit_eval, "recipe": _recipe(cfg)}
    rows = []
    for s in points:
        for seed in seeds:
            f = out / "points" / f"sparsity{s:g}-seed{seed}.json"
            if f.is_file():
                try:
                    row = json.loads(f.read_text())
                except (OSError, ValueError):
                    row = None
                if isinstance(row, dict) and row.get("settings") == settings:
                    print(f"study: sparsity {s:g} seed {seed}: done before ({f})", file=sys.stderr, flush=True)
                    rows.append(row)
                    continue
            print(f"study: sparsity {s:g} seed {seed}", file=sys.stderr, flush=True)
            row = _point(target, cfg, s, seed, settings, out, cache_dir)
            _io.write_json(f, row)
            rows.append(row)
    summary = summarize(rows, attacks, eps)
    v = verdict(summary, attacks, eps)
    res = {"target": t.name, "dataset": cfg.dataset, "model": cfg.model, "seeds": seeds, "settings": settings,
           "recipe": _recipe(cfg), "summary": summary, "verdict": v, "rows": rows}
    _io.write_json(out / "study.json", res)
    with _io.atomic_path(out / "study.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            flat = [_flat(p) for p in summary["points"]]
            w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in flat for k in row)), restval="")
            w.writeheader()
            w.writerows(flat)
    _plots(summary, attacks, eps, t, out)
    _io.write_text(out / "study.md", markdown(res))
    return res


def _recipe(cfg: BuildConfig) -> str:
    return (f"{cfg.train.epochs} dense epochs with the sparsity objective (shared by the points of a seed), pruned to "
            f"the point's sparsity (global importance threshold), then {cfg.finetune.epochs} fine-tune epochs at lr "
            f"{cfg.finetune.lr:g}{f', KD weight {cfg.finetune.kd_alpha:g}' if cfg.finetune.kd_alpha else ''} "
            f"(sparsity 0 too)")


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def interval(per_seed: list[float], paired: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-seed values: Student's t over seeds; with one seed and `paired` correctness vectors
    (this point, the dense point), a normal interval of the paired per-image difference; else (m, m, m)."""
    m = statistics.fmean(per_seed)
    if len(per_seed) >= 2:
        h = _t975(len(per_seed) - 1) * statistics.stdev(per_seed) / math.sqrt(len(per_seed))
        return m, m - h, m + h
    if paired is not None:
        d = paired[0].astype(float) - paired[1].astype(float)
        h = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) * 100 if len(d) > 1 else 0.0
        return m, m - h, m + h
    return m, m, m


def summarize(rows: list[dict], attacks: Sequence[str], eps: Sequence[float]) -> dict:
    """Per sparsity: mean and 95 % interval over seeds of every metric, and of its difference to the dense point
    of the same seed (paired), with the word the interval allows."""
    metrics = ["acc_int8", "acc_fp32"] + metric_names(attacks, eps)
    by = {(r["sparsity"], r["seed"]): r for r in rows}
    sparsities = sorted({r["sparsity"] for r in rows})

    def val(r, k):
        return r[k] if k in r else r["robust"][k]

    points = []
    for s in sparsities:
        seeds = sorted(seed for (ss, seed) in by if ss == s)
        rs = [by[(s, seed)] for seed in seeds]
        p = {"sparsity": s, "seeds": seeds, "n_seeds": len(seeds),
             **{k: statistics.fmean(r[k] for r in rs) for k in ("macs", "params", "size_kb", "predicted_p90_ms",
                                                                "host_p50_ms_1t", "int8_agreement")},
             "int8_agreement_min": min(r["int8_agreement"] for r in rs), "metrics": {}, "vs_dense": {}}
        for k in metrics:
            m, lo, hi = interval([val(r, k) for r in rs])
            p["metrics"][k] = {"mean": m, "lo": lo, "hi": hi}
            if s == 0:
                continue
            paired = [seed for seed in seeds if (0.0, seed) in by]
            if not paired:
                continue
            diffs = [val(by[(s, seed)], k) - val(by[(0.0, seed)], k) for seed in paired]
            pv = None
            if len(paired) == 1 and k in by[(s, paired[0])]["correct"]:
                a, d0 = by[(s, paired[0])], by[(0.0, paired[0])]
                pv = (_unpack(a["correct"][k], a["robust_n"]), _unpack(d0["correct"][k], d0["robust_n"]))
            m, lo, hi = interval(diffs, pv)
            if len(diffs) == 1 and pv is None:  # one seed and no per-image bits (clean accuracy): no interval
                word = "no interval (one seed)"
            else:
                word = "improves" if lo > 0 else "hurts" if hi < 0 else "no detectable difference"
            p["vs_dense"][k] = {"mean": m, "lo": lo, "hi": hi, "per_seed": diffs, "word": word}
        points.append(p)
    return {"metrics": metrics, "points": points}


def verdict(summary: dict, attacks: Sequence[str], eps: Sequence[float]) -> str:
    """The claim "sparsity keeps accuracy and improves robustness", judged only where an interval excludes zero."""
    sparse = [p for p in summary["points"] if p["sparsity"] > 0 and p["vs_dense"]]
    if not sparse:
        return "Only the dense point was measured: no verdict."
    keeps = [p["sparsity"] for p in sparse if p["vs_dense"]["acc_int8"]["mean"] >= -KEEP_PT]
    up, down, flat = [], [], 0
    for p in sparse:
        for k in metric_names(attacks, eps):
            v = p["vs_dense"].get(k)
            if v is None:
                continue
            cell = (p["sparsity"], k, round(v["mean"], 1))
            if v["word"] == "improves":
                up.append(cell)
            elif v["word"] == "hurts":
                down.append(cell)
            else:
                flat += 1
    acc = f"clean int8 top-1 within {KEEP_PT} pt of dense (mean over seeds) at sparsities {keeps or 'none'}"
    if up and not down:
        word = "TRUE" if len(keeps) == len(sparse) else "MIXED"
        rob = f"improves where detectable: {up}"
    elif down and not up:
        word, rob = "FALSE", f"hurts where detectable: {down}"
    elif up and down:
        word, rob = "MIXED", f"improves at {up}, hurts at {down}"
    else:
        word, rob = "NO DETECTABLE DIFFERENCE", "no robust-accuracy difference's interval excludes zero"
    return (f"**{word}.** Measured {acc}; robustness: {rob}; {flat} other (sparsity, metric) cells show no "
            f"detectable difference (sparsity, metric, mean change in pt).")


def pareto(rows: list[dict], x: str, y: str) -> list[dict]:
    """Points no other point beats on both lower x and higher y."""
    front = [r for r in rows if not any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in rows)]
    return sorted(front, key=lambda r: r[x])


def _flat(p: dict) -> dict:
    d = {k: p[k] for k in ("sparsity", "n_seeds", "macs", "params", "size_kb", "predicted_p90_ms", "host_p50_ms_1t",
                           "int8_agreement", "int8_agreement_min")}
    for k, v in p["metrics"].items():
        d[k], d[f"{k}_lo"], d[f"{k}_hi"] = round(v["mean"], 3), round(v["lo"], 3), round(v["hi"], 3)
    for k, v in p["vs_dense"].items():
        d[f"d_{k}"], d[f"d_{k}_lo"], d[f"d_{k}_hi"] = round(v["mean"], 3), round(v["lo"], 3), round(v["hi"], 3)
    return d


def _plots(summary, attacks, eps, t, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["points"]

    def err(p, k):
        v = p["metrics"][k]
        return v["mean"], [[v["mean"] - v["lo"]], [v["hi"] - v["mean"]]]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, label in ((axes[0], "host_p50_ms_1t", "measured p50 on this host, 1 thread (ms)"),
                         (axes[1], "predicted_p90_ms", f"predicted p90 on {t.name} (ms)")):
        for p in pts:
            m, e = err(p, "acc_int8")
            ax.errorbar([p[x]], [m], yerr=e, fmt="o", capsize=3, color="C0")
            ax.annotate(f"{p['sparsity']:g}", (p[x], m), fontsize=8, xytext=(4, 3), textcoords="offset points")
        flat = [{"x": p[x], "y": p["metrics"]["acc_int8"]["mean"]} for p in pts]
        f = pareto(flat, "x", "y")
        ax.plot([r["x"] for r in f], [r["y"] for r in f], "k--", lw=1, label="Pareto front")
        if x == "predicted_p90_ms" and t.latency_budget_ms is not None:
            ax.axvline(t.latency_budget_ms, color="r", lw=1, ls=":", label=f"{t.name} budget")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("int8 .tflite top-1, whole test split (%)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, a in enumerate(attacks):
        for j, e in enumerate(eps):
            for kind, ls, mk in (("fp32", "-", "o"), ("int8", "--", "x")):
                k = f"{a}_{kind}_eps{e:g}"
                xs = [p["sparsity"] for p in pts]
                ms = [p["metrics"][k]["mean"] for p in pts]
                lo = [p["metrics"][k]["mean"] - p["metrics"][k]["lo"] for p in pts]
                hi = [p["metrics"][k]["hi"] - p["metrics"][k]["mean"] for p in pts]
                ax.errorbar(xs, ms, yerr=[lo, hi], ls=ls, marker=mk, capsize=2, color=f"C{i * len(eps) + j}",
                            label=f"{a} eps {e:g} ({'white-box fp32' if kind == 'fp32' else 'transfer to int8'})")
    _finish(plt, fig, ax, "sparsity (channel fraction removed)", "robust top-1 (%), 95 % interval over seeds",
            out / "robust_vs_sparsity.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = ["acc_int8"] + [f"{a}_fp32_eps{e:g}" for a in attacks for e in eps]
    sparse = [p for p in pts if p["vs_dense"]]
    w = 0.8 / max(1, len(names))
    for i, k in enumerate(names):
        xs = [j + i * w for j in range(len(sparse))]
        ms = [p["vs_dense"][k]["mean"] for p in sparse]
        ax.errorbar(xs, ms, yerr=[[m - p["vs_dense"][k]["lo"] for m, p in zip(ms, sparse)],
                                  [p["vs_dense"][k]["hi"] - m for m, p in zip(ms, sparse)]],
                    fmt="o", capsize=3, label=k)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([j + w * (len(names) - 1) / 2 for j in range(len(sparse))])
    ax.set_xticklabels([f"{p['sparsity']:g}" for p in sparse])
    _finish(plt, fig, ax, "sparsity", "change vs dense (pt), 95 % interval", out / "difference_vs_dense.png")


def _finish(plt, fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ci(v: dict) -> str:
    return f"{v['mean']:.2f} ({v['lo']:.2f}…{v['hi']:.2f})" if v["hi"] > v["lo"] else f"{v['mean']:.2f}"


def markdown(res: dict) -> str:
    sm, st = res["summary"], res["settings"]
    attacks, eps = st["attacks"], st["eps"]
    rob = metric_names(attacks, eps)
    L = [f"# Sparsity study: {res['model']} on {res['dataset']}, target {res['target']}\n",
         f"Seeds {', '.join(map(str, res['seeds']))}. Every point: {res['recipe']}. Clean accuracy on the whole test "
         f"split; robust accuracy on the first {st['robust_n']:,} test images (the same for every point), L∞: "
         f"`pgd` = our PGD-{st['steps']} with random start, `apgd-ce` = AutoAttack's APGD-CE ({st['steps']} steps, "
         f"torchattacks), both crafted on the fp32 model (`fp32`: white-box) and replayed on the int8 .tflite "
         f"(`int8`: transfer). Values: mean over seeds (95 % t-interval over seeds). Host latency: ai-edge-litert + "
         f"XNNPACK, 1 thread, on the machine that ran the study.\n",
         "| sparsity | MACs | params | predicted p90 (ms) | host p50, 1 thread (ms) | clean int8 (%) | int8 agreement (min) | "
         + " | ".join(rob) + " |", "|" + "---|" * (7 + len(rob))]
    for p in sm["points"]:
        m = p["metrics"]
        L.append(f"| {p['sparsity']:g} | {p['macs'] / 1e6:.2f} M | {p['params']:,.0f} | {p['predicted_p90_ms']:.3f} | "
                 f"{p['host_p50_ms_1t']:.4f} | {_ci(m['acc_int8'])} | {p['int8_agreement']:.2f} ({p['int8_agreement_min']:.2f}) | "
                 + " | ".join(_ci(m[k]) for k in rob) + " |")
    L += ["", "## Change against the dense point (same seed, paired), pt", "",
          "| sparsity | clean int8 | " + " | ".join(rob) + " |", "|" + "---|" * (2 + len(rob))]
    for p in sm["points"]:
        if not p["vs_dense"]:
            continue
        cells = []
        for k in ["acc_int8"] + rob:
            v = p["vs_dense"][k]
            w = {"improves": " **↑**", "hurts": " **↓**"}.get(v["word"], "")
            cells.append(f"{v['mean']:+.2f} ({v['lo']:+.2f}…{v['hi']:+.2f}){w}")
        L.append(f"| {p['sparsity']:g} | " + " | ".join(cells) + " |")
    L += ["", "↑ / ↓: the interval excludes zero (improves / hurts); otherwise no detectable difference.", "",
          "![accuracy vs latency](accuracy_vs_latency.png)", "![robust vs sparsity](robust_vs_sparsity.png)",
          "![change vs dense](difference_vs_dense.png)", "", "## Verdict", "", res["verdict"], "",
          "Reproduce the verdict from `study.json`: `python -c \"import json; from edge_sparse.study import summarize, "
          "verdict; r = json.load(open('docs/study/study.json')); s = r['settings']; "
          "print(verdict(summarize(r['rows'], s['attacks'], s['eps']), s['attacks'], s['eps']))\"`", ""]
    return "\n".join(L)
