"""`make benchmarks` / `python -m benchmarks`: the shipped model against the dense one, in one run on
one machine, so every claim is a ratio measured side by side.

Measures (ai-edge-litert + XNNPACK, 1 and 2 threads, median of >= 300 interleaved runs after warm-up):
dense fp32 .tflite, dense int8, pruned fp32, shipped pruned int8; ONNX Runtime fp32 vs int8 (dense and
pruned); torch eager dense vs pruned. For each: latency, MACs, params, size, top-1 on the held-out
images. Derived: shipped int8 vs dense fp32 speedup, latency ratio / MAC ratio for pruning alone, int8
agreement. Also: the default build's per-stage wall time and peak memory, a dense baseline trained
without the sparsity objective for the same number of epochs (the fair accuracy reference), and the
harness's median against LiteRT's own benchmark tool on the same model.

Writes benchmarks/results.json, keeps every timed model in benchmarks/out/, and rewrites BENCHMARKS.md: the summary
first (the current default's headline numbers, generated from the committed benchmarks/*.json), then every section
between `<!-- tag:begin -->` / `<!-- tag:end -->` markers in the order the file already has them (this run's own
section, `side-by-side`, replaced; sections other commands wrote, and any text outside markers, kept where they are).

    python -m benchmarks --summary-only   # measure nothing: regenerate BENCHMARKS.md's summary and README's headline table
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def _interleaved(runners: dict, rounds: int, per_round: int) -> dict:
    """Median / p90 ms per runner, alternating runners round by round so drift hits all alike."""
    samples = {k: [] for k in runners}
    for fn in runners.values():  # warm-up
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for k, fn in runners.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "n": len(v)} for k, v in samples.items()}


def _tflite_runner(path: Path, threads: int):
    from edge_sparse.verify import tflite_interpreter

    it = tflite_interpreter(path, threads)
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return it.invoke


def _onnx_runner(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}
    return lambda: s.run(None, x)


def _torch_runner(model, shape, threads: int):
    import torch

    x = torch.zeros(1, *shape)
    model.eval()

    def run():
        torch.set_num_threads(threads)
        with torch.no_grad():
            model(x)

    return run


def _baseline(b, cache: Path) -> dict:
    """Dense model trained WITHOUT the sparsity objective for the build's total epoch budget."""
    import torch

    from edge_sparse import models
    from edge_sparse.pipeline import _hash
    from edge_sparse.train import accuracy, fit

    epochs = b.cfg.train.epochs + b.cfg.finetune.epochs
    key = _hash(["baseline", b.keys["train"], epochs])
    d = cache / f"baseline-{key}"
    if (d / "result.json").is_file():
        return json.loads((d / "result.json").read_text())
    torch.manual_seed(b.cfg.seed)
    m = models.create(b.cfg.model, **b.arch_kwargs)
    t = time.time()
    fit(m, b.splits, b.cfg.train.replace(epochs=epochs, sparsity_reg="none", seed=b.cfg.seed))
    from edge_sparse.pipeline import _eval_set
    from edge_sparse.data import ImageSet

    x, y = _eval_set(b)
    res = {"epochs": epochs, "test_acc_eval_set": accuracy(m, ImageSet(x, y), b.splits.mean, b.splits.std),
           "test_acc_full": accuracy(m, b.splits.test, b.splits.mean, b.splits.std), "seconds": time.time() - t}
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps(res))
    return res


def _litert_tool(model: Path, threads: int) -> dict:
    """LiteRT's own benchmark (ai-edge-litert 2.3's tools.benchmark_litert_model, CompiledModel API), in
    its own venv under benchmarks/out/ because the pinned stack holds ai-edge-litert 2.1."""
    venv = OUT / "litert-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run(["python3.11", "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "ai-edge-litert==2.3.0"],
                               capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return {"error": "cannot install ai-edge-litert 2.3.0 in a venv: " + (r.stderr or r.stdout)[-300:]}
    out = OUT / f"litert_tool_{threads}t.json"
    r = subprocess.run([str(py), "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(model),
                        "--num_threads", str(threads), "--num_runs", "300", "--warmup_runs", "20", "--result_json", str(out)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not out.is_file():
        return {"error": (r.stderr or r.stdout).strip()[-400:]}
    lat = json.loads(out.read_text())["latency"]
    return {"median_ms": lat["median_ms"], "avg_ms": lat["avg_ms"], "p95_ms": lat["p95_ms"], "resolution_ms": 0.01}


def _harness(bundle: Path, threads: int, python: str = sys.executable) -> dict:
    out = OUT / "harness.json"
    out.unlink(missing_ok=True)
    r = subprocess.run([python, "bench.py", "--runtime", "ai_edge_litert", "--threads", str(threads), "--runs", "300",
                        "--eval-limit", "50", "--json", str(out)], cwd=bundle, capture_output=True, text=True, timeout=600)
    if not out.is_file():
        return {"error": r.stderr.strip()[-300:]}
    rep = json.loads(out.read_text())
    return {"median_ms": rep["latency_ms"]["p50"], "p90_ms": rep["latency_ms"]["p90"], "exit": r.returncode,
            "runtime_version": rep["runtime_version"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--target", default="rpi4")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=30)
    p.add_argument("--no-baseline", action="store_true", help="skip training the no-sparsity dense baseline")
    p.add_argument("--summary-only", action="store_true", help="measure nothing: regenerate BENCHMARKS.md's summary and "
                   "README's headline table from the committed benchmarks/*.json")
    a = p.parse_args(argv)
    if a.summary_only:
        for path in write_summary():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0

    from edge_sparse import models, verify
    from edge_sparse.config import BuildConfig
    from edge_sparse.data import ImageSet
    from edge_sparse.pipeline import _eval_set, run
    from edge_sparse.train import predict

    OUT.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "build" / "cache"
    b = run(a.target, BuildConfig(), out_dir=ROOT / "dist", cache_dir=cache)  # cached after `make build`
    e = b.dirs["export"]
    for n in ("dense_fp32.tflite", "dense_int8.tflite", "model_fp32.tflite", "model.tflite", "dense_fp32.onnx",
              "dense_int8.onnx", "model_fp32.onnx", "model.onnx"):
        shutil.copyfile(e / n, OUT / n)
    dense, _ = models.load(b.dirs["reference"] / "dense")
    pruned, _ = models.load(b.dirs["finetune"] / "model")
    search = b.results["search"]
    dense_c = next(c for c in search["candidates"] if c["sparsity"] == 0)
    ch = search["chosen"]
    x, y = _eval_set(b)
    mean, std = b.splits.mean, b.splits.std
    ref_dense = predict(dense, ImageSet(x, y), mean, std)
    ref_pruned = predict(pruned, ImageSet(x, y), mean, std)

    arts = {
        "tflite dense fp32": ("dense_fp32.tflite", dense_c, ref_dense),
        "tflite dense int8": ("dense_int8.tflite", dense_c, ref_dense),
        "tflite pruned fp32": ("model_fp32.tflite", ch, ref_pruned),
        "tflite pruned int8 (shipped)": ("model.tflite", ch, ref_pruned),
        "onnxruntime dense fp32": ("dense_fp32.onnx", dense_c, ref_dense),
        "onnxruntime dense int8": ("dense_int8.onnx", dense_c, ref_dense),
        "onnxruntime pruned fp32": ("model_fp32.onnx", ch, ref_pruned),
        "onnxruntime pruned int8": ("model.onnx", ch, ref_pruned),
    }
    rows = {}
    for name, (f, c, ref) in arts.items():
        runner = verify.run_tflite if f.endswith(".tflite") else verify.run_onnx
        logits = runner(OUT / f, x, mean, std)
        rows[name] = {"file": f, "macs": c["macs"], "params": c["params"], "size_kb": round((OUT / f).stat().st_size / 1024, 2),
                      "top1": float((logits.argmax(1) == y).mean() * 100),
                      "agreement_vs_torch": float((logits.argmax(1) == ref.argmax(1)).mean() * 100)}
    for name, (m, c, ref) in {"torch eager dense fp32": (dense, dense_c, ref_dense),
                              "torch eager pruned fp32": (pruned, ch, ref_pruned)}.items():
        rows[name] = {"file": None, "macs": c["macs"], "params": c["params"], "size_kb": None,
                      "top1": float((ref.argmax(1) == y).mean() * 100), "agreement_vs_torch": 100.0}
    shape = b.splits.input_shape
    for threads in (1, 2):
        runners = {}
        for name, (f, _, _) in arts.items():
            runners[name] = (_tflite_runner if f.endswith(".tflite") else _onnx_runner)(OUT / f, threads)
        runners["torch eager dense fp32"] = _torch_runner(dense, shape, threads)
        runners["torch eager pruned fp32"] = _torch_runner(pruned, shape, threads)
        for name, t in _interleaved(runners, a.rounds, a.per_round).items():
            rows[name][f"{threads}t"] = t
    derived = {}
    for t in ("1t", "2t"):
        lat = lambda k: rows[k][t]["median_ms"]  # noqa: E731
        mac_ratio = dense_c["macs"] / ch["macs"]
        derived[t] = {
            "speedup_shipped_int8_vs_dense_fp32_tflite": lat("tflite dense fp32") / lat("tflite pruned int8 (shipped)"),
            "pruning_latency_ratio_fp32": lat("tflite dense fp32") / lat("tflite pruned fp32"),
            "pruning_latency_ratio_int8": lat("tflite dense int8") / lat("tflite pruned int8 (shipped)"),
            "mac_ratio": mac_ratio,
            "latency_ratio_over_mac_ratio_fp32": lat("tflite dense fp32") / lat("tflite pruned fp32") / mac_ratio,
            "latency_ratio_over_mac_ratio_int8": lat("tflite dense int8") / lat("tflite pruned int8 (shipped)") / mac_ratio,
            "int8_speedup_over_fp32_pruned": lat("tflite pruned fp32") / lat("tflite pruned int8 (shipped)"),
            "onnx_int8_speedup_pruned": lat("onnxruntime pruned fp32") / lat("onnxruntime pruned int8"),
            "torch_pruning_speedup": lat("torch eager dense fp32") / lat("torch eager pruned fp32"),
        }
    baseline = None if a.no_baseline else _baseline(b, cache)
    bundle = b.out_dir / b.target.name
    tool = {th: _litert_tool(OUT / "model.tflite", th) for th in (1, 2)}  # also makes the 2.3 venv
    harness = {th: _harness(bundle, th) for th in (1, 2)}
    lt_py = OUT / "litert-venv" / "bin" / "python"
    harness23 = {th: _harness(bundle, th, str(lt_py)) if lt_py.exists() else {"error": "no venv"} for th in (1, 2)}
    meta = json.loads((bundle / "metadata.json").read_text())
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(), **meta["versions"]},
        "target": a.target, "eval_images": int(len(y)), "rows": rows, "derived": derived,
        "shipped_sparsity": ch["sparsity"], "baseline_no_sparsity": baseline,
        "build": {"stage_seconds_when_built": meta["build"]["stage_seconds_when_built"], "peak_rss_mb": meta["build"].get("peak_rss_mb_when_built")},
        "harness_vs_litert_tool": {str(k): {"harness": harness[k], "harness_litert23": harness23[k], "litert_tool": tool[k]}
                                   for k in (1, 2)},
        "accuracy": meta["accuracy"], "dense_reference": meta["dense"].get("reference"),
    }
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from edge_sparse import _io

    bm = ROOT / "BENCHMARKS.md"
    _io.write_text(bm, render(results, bm.read_text() if bm.is_file() else ""))
    write_summary()  # README's headline table from the same json
    print(bm.read_text())
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render_side_by_side(r: dict) -> str:
    """This command's own section (`side-by-side` markers): the shipped model against the dense one, measured now."""
    L = [f"<!-- {SIDE_TAG}:begin -->", "## Dense vs shipped side by side (`make benchmarks`)", "",
         f"Measured {r['date']} on {r['machine']['cpu']} ({r['machine']['cores']} cores), Python {r['machine']['python']}, "
         f"torch {r['machine'].get('torch')}, tensorflow {r['machine'].get('tensorflow')}, onnxruntime {r['machine'].get('onnxruntime')}, "
         f"ai-edge-litert {r['machine'].get('ai-edge-litert')}. Re-run with `make benchmarks` (after `make build`); "
         f"the timed models stay in `benchmarks/out/`, the numbers in `benchmarks/results.json`.",
         "", "This machine is shared and noisy: read **ratios** measured side by side (runners interleaved round by "
         f"round, median of {r['rows']['tflite dense fp32']['1t']['n']} single-image runs each after warm-up), not absolute times.", "",
         f"Default model (`make build TARGET={r['target']}`, default flags): sparsity {r['shipped_sparsity']:.2f}; accuracy on {r['eval_images']} held-out test images.", "",
         "| model | runtime | MACs | params | size (KiB) | top-1 (%) | agreement vs torch (%) | median 1 thread (ms) | median 2 threads (ms) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        rt = name.split(" ")[0]
        L.append(f"| {name} | {rt} | {row['macs']:,} | {row['params']:,} | {row['size_kb'] if row['size_kb'] is not None else '–'} | "
                 f"{row['top1']:.2f} | {row['agreement_vs_torch']:.2f} | {row['1t']['median_ms']:.4f} | {row['2t']['median_ms']:.4f} |")
    L += ["", "### Derived (goal in brackets)", "", "| | 1 thread | 2 threads |", "|---|---|---|"]
    d1, d2 = r["derived"]["1t"], r["derived"]["2t"]
    names = [("speedup_shipped_int8_vs_dense_fp32_tflite", "shipped int8 vs dense fp32 .tflite speedup [≥ 10×]"),
             ("mac_ratio", "MAC ratio dense / pruned"),
             ("pruning_latency_ratio_fp32", "pruning alone, fp32 .tflite latency ratio"),
             ("latency_ratio_over_mac_ratio_fp32", "latency ratio ÷ MAC ratio, fp32 [≥ 0.9]"),
             ("pruning_latency_ratio_int8", "pruning alone, int8 .tflite latency ratio"),
             ("latency_ratio_over_mac_ratio_int8", "latency ratio ÷ MAC ratio, int8 [≥ 0.9]"),
             ("int8_speedup_over_fp32_pruned", "int8 vs fp32 speedup (pruned model, .tflite)"),
             ("onnx_int8_speedup_pruned", "ONNX Runtime int8 vs fp32 speedup (pruned)"),
             ("torch_pruning_speedup", "torch eager: dense / pruned latency")]
    for k, label in names:
        L.append(f"| {label} | {d1[k]:.2f} | {d2[k]:.2f} |")
    acc = r["accuracy"]
    rows = r["rows"]
    L += ["", "### Accuracy", "",
          f"- int8 .tflite vs torch fp32 (shipped model): top-1 agreement {rows['tflite pruned int8 (shipped)']['agreement_vs_torch']:.2f}% [≥ 99.5%], "
          f"accuracy {acc['tflite_int8']:.2f}% vs {acc['torch_fp32']:.2f}% ({acc['tflite_int8'] - acc['torch_fp32']:+.2f} pt) [≥ −0.3 pt].",
          f"- shipped int8 vs the build's dense reference (fp32; {r.get('dense_reference', 'the dense model of the same run')}): "
          f"{acc['tflite_int8']:.2f}% vs {acc['torch_fp32_dense']:.2f}% "
          f"({acc['tflite_int8'] - acc['torch_fp32_dense']:+.2f} pt) [≥ −0.5 pt]."]
    bl = r.get("baseline_no_sparsity")
    if bl:
        L.append(f"- dense baseline trained **without** the sparsity objective for the same {bl['epochs']} epochs: "
                 f"{bl['test_acc_eval_set']:.2f}% on the same images ({bl['test_acc_full']:.2f}% on all 10k); shipped int8 is "
                 f"{acc['tflite_int8'] - bl['test_acc_eval_set']:+.2f} pt from it.")
    st = r["build"]["stage_seconds_when_built"]
    L += ["", "### Build (default `make build TARGET=rpi4`, when it was built)", "",
          "| stage | wall time (s) |", "|---|---|"]
    for k, v in st.items():
        L.append(f"| {k} | {v:.1f} |")
    L.append(f"| **total** | **{sum(st.values()):.1f}** |")
    L.append(f"\nPeak memory (max RSS) of the build process while it computed the stages: {r['build']['peak_rss_mb']} MiB.")
    L += ["", "### Harness vs LiteRT's benchmark tool (shipped model)", "",
          "`bench.py` times set-input + invoke + get-output with the Interpreter API; LiteRT's "
          "`ai_edge_litert.tools.benchmark_litert_model` (ai-edge-litert 2.3, its own venv) times `run_by_name` of the "
          "CompiledModel API and reports 0.01 ms steps. The harness runs under both runtime versions.", "",
          "| threads | bench.py, ai-edge-litert 2.1 (ms) | bench.py, ai-edge-litert 2.3 (ms) | litert tool 2.3 (ms) | harness 2.3 vs tool [within 5%] |",
          "|---|---|---|---|---|"]
    for th, v in r["harness_vs_litert_tool"].items():
        tool = v["litert_tool"] or {}
        ref = tool.get("median_ms")
        h21, h23 = v["harness"].get("median_ms"), v.get("harness_litert23", {}).get("median_ms")
        agree = f"{100 * (h23 / ref - 1):+.1f}%" if ref and h23 else "–"
        L.append(f"| {th} | {h21 if h21 is None else f'{h21:.4f}'} | {h23 if h23 is None else f'{h23:.4f}'} | "
                 f"{ref if ref else 'unavailable: ' + str(tool.get('error', ''))[:120]} | {agree} |")
    L.append(f"<!-- {SIDE_TAG}:end -->")
    return "\n".join(L) + "\n"


def render(r: dict, old: str) -> str:
    """BENCHMARKS.md after a `make benchmarks` run: `old` with this run's section and the summary regenerated."""
    return assemble(old, {SIDE_TAG: render_side_by_side(r), SUMMARY_TAG: summary_section(headline())})


# --- BENCHMARKS.md's layout, and the summary it opens with -------------------------------------------------------------
# Every section of BENCHMARKS.md sits between `<!-- tag:begin -->` and `<!-- tag:end -->`; each command replaces its own
# (benchmarks.splice, seeds.py) and leaves the others as they are. The summary is the current default's headline numbers,
# generated from the committed json, and README.md's headline table is the same rows (tests/test_docs.py checks both).
SIDE_TAG = "side-by-side"  # this command's own section
SUMMARY_TAG = "summary"  # BENCHMARKS.md's first section after its introduction
README_TAG = "headline"  # README.md's headline table
_MARKED = re.compile(r"<!-- ([\w:.-]+):begin -->.*?<!-- \1:end -->\n?", re.S)
# sections their commands also write as files (the newer copy when the two differ: they write both at once)
SECTION_FILES = ("latency.md", "latency-check.md", "harness-fuzz.md", "seeds-*.md")
# benchmarks/recipes.json rows that ran today's default build flags ("default" rows win; test_docs checks the flags)
DEFAULT_RECIPES = ("default", "default-kd0-ftlr1")


def sections(text: str) -> list[tuple[str | None, str]]:
    """`text` cut into (tag, block) in order; text between marked sections comes back as (None, text)."""
    out, at = [], 0
    for m in _MARKED.finditer(text):
        if text[at:m.start()].strip():
            out.append((None, text[at:m.start()]))
        out.append((m.group(1), m.group(0)))
        at = m.end()
    if text[at:].strip():
        out.append((None, text[at:]))
    return out


def assemble(old: str, fresh: dict[str, str], root: Path = ROOT) -> str:
    """BENCHMARKS.md from its previous text: every section in its place, those in `fresh` (and in SECTION_FILES)
    replaced; nothing dropped. A fresh summary goes after the introduction, any other new section at the end."""
    files = {}
    for pattern in SECTION_FILES:
        for f in sorted((root / "benchmarks").glob(pattern)):
            files.update((t, b) for t, b in sections(f.read_text()) if t)
    new = {**files, **fresh}
    parts = sections(old) or [(None, "# BENCHMARKS\n")]
    tags = [t for t, _ in parts]
    if SUMMARY_TAG in new and SUMMARY_TAG not in tags:
        at = tags.index("intro") + 1 if "intro" in tags else 1
        parts.insert(at, (SUMMARY_TAG, ""))
        tags.insert(at, SUMMARY_TAG)
    parts += [(t, "") for t in new if t not in tags]
    return "\n\n".join((new.get(t, b) if t else b).strip("\n") for t, b in parts) + "\n"


def _load(root: Path, name: str):
    f = root / "benchmarks" / name
    return json.loads(f.read_text()) if f.is_file() else None


def _date(path: Path) -> str:
    """When a result was measured: its own `date` field, else the last commit that changed its file."""
    try:
        d = json.loads(path.read_text())
        if isinstance(d, dict) and d.get("date"):
            return str(d["date"])[:10]
    except (OSError, ValueError):
        pass
    try:
        r = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or "not committed"
    except (OSError, subprocess.SubprocessError):
        return "–"


def _seeds(seeds) -> str:
    s = sorted(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"seeds {s[0]}–{s[-1]}"
    return ("seed " if len(s) == 1 else "seeds ") + ", ".join(map(str, s))


def _msd(v: list[float], sign: str = "") -> str:
    """mean ± sd, as the recipes and seeds tables print it."""
    import statistics

    return f"{statistics.fmean(v):{sign}.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"


def _verdict(lo: float, hi: float) -> str:
    return "shipped ahead" if lo > 0 else "shipped behind" if hi < 0 else "no detectable difference"


def _row(claim: str, value: str, date: str, command: str, where: str) -> dict:
    return {"claim": claim, "value": value, "date": date, "command": command, "where": where}


def _missing(claim: str, name: str, command: str, where: str) -> dict:
    return _row(claim, f"not yet measured (`{command}` writes benchmarks/{name})", "–", command, where)


def headline(root: Path = ROOT) -> list[dict]:
    """The current default's headline numbers, one row per claim, each from a committed result file: what README's
    table and BENCHMARKS.md's summary show. A missing file gives a 'not yet measured' row."""
    import statistics

    bm = root / "benchmarks"
    rows = []
    rec = _load(root, "recipes.json") or []
    mine: dict[int, dict] = {}
    for name in reversed(DEFAULT_RECIPES):
        mine.update((r["seed"], r) for r in rec if r["recipe"] == name and r["target"] == "rpi4")
    d = [mine[k] for k in sorted(mine)]
    cmd = "make recipes RECIPES=default SEEDS=0,1,2"
    if d:
        secs = [r["train_seconds"] for r in d]
        rows.append(_row("default build time (`make build TARGET=rpi4`)",
                         f"{' / '.join(f'{s:.0f}' for s in secs)} s of stage time, train to verify ({_seeds(mine)}; "
                         f"median {statistics.median(secs) / 60:.1f} min); 2-core x86 hosts, some runs beside other jobs",
                         _date(bm / "recipes.json"), cmd, "Training recipes"))
        rows.append(_row("shipped vs dense: accuracy",
                         f"int8 {_msd([r['shipped_int8'] for r in d])} % vs dense reference fp32 "
                         f"{_msd([r['dense_fp32'] for r in d])} %: {_msd([r['diff_int8_vs_dense_pt'] for r in d], '+')} pt "
                         f"({_seeds(mine)}, all {d[0]['n_test']:,} test images; goal ≥ −0.5 pt)",
                         _date(bm / "recipes.json"), cmd, "Seeds"))
    else:
        rows += [_missing("default build time", "recipes.json", cmd, "Training recipes"),
                 _missing("shipped vs dense: accuracy", "recipes.json", cmd, "Seeds")]
    pts = [p for p in _load(root, "compare.json") or [] if not p.get("quick") and p.get("dataset", "fashion-mnist") ==
           "fashion-mnist" and p.get("device", "cpu") == "cpu"]

    def group(budget: str, model: str) -> dict[str, dict[int, dict]]:
        g: dict[str, dict[int, dict]] = {}
        for p in pts:
            if p["budget"] == budget and p.get("model", "resnet8") == model:
                g.setdefault(p["method"], {})[p["seed"]] = p
        return g

    r8 = group("rpi4", "resnet8")
    sh, de = r8.get("shipped", {}), r8.get("dense", {})
    both = sorted(s for s in sh if s in de and "top1" in sh[s] and "top1" in de[s])
    if both:
        s0, d0 = sh[both[0]], de[both[0]]
        host = statistics.fmean(de[s]["host_p90_ms"] / sh[s]["host_p90_ms"] for s in both)
        rows.append(_row("shipped vs dense: speed",
                         f"{s0['macs'] / 1e6:.2f} M of {d0['macs'] / 1e6:.2f} M MACs (÷{d0['macs'] / s0['macs']:.2f}); Pi 4 "
                         f"p90 {s0['predicted_p90_ms']:.3f} vs {d0['predicted_p90_ms']:.3f} ms by the fitted estimate "
                         f"(÷{d0['predicted_p90_ms'] / s0['predicted_p90_ms']:.2f}; no Pi measured); measured int8 side by "
                         f"side on the x86 build host: ÷{host:.2f} at p90 ({_seeds(both)})",
                         _date(bm / "compare.json"), "make compare", "The shipped model against the alternatives"))
    else:
        rows.append(_missing("shipped vs dense: speed", "compare.json", "make compare", "The shipped model against the alternatives"))
    agree = _load(root, "int8_agreement.json")
    cmd = "python -m benchmarks.int8_agreement --write"
    if agree:
        pct = " / ".join(f"{r['agreement']:.2f}" for r in agree)
        flips = " / ".join(str(r["flips"]) for r in agree)
        rows.append(_row("int8 agreement with torch fp32 (top-1)",
                         f"{pct} % of {agree[0]['n']:,} test images, {flips} flips ({_seeds(r['seed'] for r in agree)}; "
                         f"goal ≥ 99.5 % on every seed)", _date(bm / "int8_agreement.json"), cmd, "Where int8 disagrees with fp32"))
    else:
        rows.append(_missing("int8 agreement with torch fp32", "int8_agreement.json", cmd, "Where int8 disagrees with fp32"))
    lat = bm / "latency.md"  # benchmarks.latency keeps its json under benchmarks/out/ (not committed): its markdown
    m = lat.is_file() and re.search(r"\| p90 \| (\d+)% \| ([\d.]+)% \| ([\d.]+)% \|", lat.read_text())
    n = lat.is_file() and re.search(r"vs measurement: (\d+) models \(([^)]*)\)", lat.read_text())
    when = lat.is_file() and re.search(r"Measured (\d{4}-\d\d-\d\d)", lat.read_text())
    if m and n and when:
        rows.append(_row("host latency predictor vs measured",
                         f"p90 of {n.group(1)} pruned variants ({n.group(2)}) on the x86 build host: {m.group(1)} % within "
                         f"±10 %, median |error| {m.group(2)} %, worst {m.group(3)} % (goal ≥ 90 %, ≤ 5 %)",
                         when.group(1), "make benchmarks-latency", "Measured latency"))
    else:
        rows.append(_missing("host latency predictor vs measured", "latency.md", "make benchmarks-latency", "Measured latency"))
    fits = [(t, root / "edge_sparse" / "latency" / "reference" / f"fit-{t}.json") for t in ("rpi4", "android-arm64")]
    if all(f.is_file() for _, f in fits):
        goal = {"spearman": 0.97, "median_abs_err": 0.07, "within_15": 0.90}  # benchmarks.latency_check.GOAL
        parts, met = [], True
        for t, f in fits:
            fj = json.loads(f.read_text())
            h = fj["held_out"]
            met &= h["spearman"] >= goal["spearman"] and h["median_abs_err"] <= goal["median_abs_err"] and \
                h["within_15"] >= goal["within_15"]
            parts.append(f"{fj['device'].split(' (')[0]}: Spearman {h['spearman']:.3f}, median |error| "
                         f"{100 * h['median_abs_err']:.1f} %, {100 * h['within_15']:.0f} % within ±15 %")
        rows.append(_row("device latency estimate vs real Pi 4 / Pixel 3 timings",
                         f"held out, {fj['sample']['n']:,} NAS-Bench-201 networks each: " + "; ".join(parts) +
                         f" (goal ≥ 0.97, ≤ 7 %, ≥ 90 %: {'met' if met else 'missed'})",
                         max(_date(f) for _, f in fits), "make benchmarks-latency-check", "Device latency estimates vs real device timings"))
    else:
        rows.append(_missing("device latency estimate", "fit-*.json", "make benchmarks-latency-check", "Device latency estimates vs real device timings"))
    if r8.get("shipped"):
        from benchmarks.compare import seed_interval

        verdicts = []

        def vs(g: dict[str, dict[int, dict]], method: str, name: str, acc: bool = True) -> str:
            ps = [p for p in g.get(method, {}).values() if "top1" in p and "shipped_minus_this" in p]
            if not ps:
                err = next((p.get("error", "") for p in g.get(method, {}).values()), "")
                return f"{name} cannot reach the budget" if "fits" in err else f"{name} not measured"
            ps.sort(key=lambda p: p["seed"])
            diffs = [p["shipped_minus_this"] for p in ps]
            iv = seed_interval(diffs, [(g["shipped"].get(p["seed"]), p) for p in ps])
            mean = statistics.fmean(d["diff_pt"] for d in diffs)
            lo, hi = (float(x) for x in iv.strip("[]").split("…")) if iv else (mean, mean)
            verdicts.append((mean, lo, hi))
            diff = f"shipped − {name.split()[0] if acc else name} {mean:+.2f} pt {iv}".rstrip()
            return f"{name} {statistics.fmean(p['top1']['acc'] for p in ps):.2f} % ({diff})" if acc else diff

        acc = [p["top1"]["acc"] for p in r8["shipped"].values() if "top1" in p]
        value = (f"ResNet-8, rpi4 budget ({_seeds(r8['shipped'])}): shipped {statistics.fmean(acc):.2f} %, "
                 f"{vs(r8, 'width', 'width multiplier')}, {vs(r8, 'tp', 'Torch-Pruning')}")
        r20 = group("rpi4:3x", "resnet20")
        if r20.get("shipped"):
            value += (f"; ResNet-20 at 3× faster than its dense model ({_seeds(r20['shipped'])}): "
                      f"{vs(r20, 'width', 'width multiplier', acc=False)}, {vs(r20, 'tp', 'Torch-Pruning')}")
        some = [v for v in verdicts if v[1] > 0 or v[2] < 0]
        value += (f". {f'{len(some)} of {len(verdicts)} intervals' if some else 'No interval'} of the mean "
                  f"exclude{'' if len(some) > 1 else 's'} zero; goal +0.5 pt over each: "
                  f"{'met' if verdicts and all(m >= 0.5 for m, _, _ in verdicts) else 'missed'}")
        rows.append(_row("shipped vs width multiplier and Torch-Pruning at equal latency", value,
                         _date(bm / "compare.json"), "make compare", "The shipped model against the alternatives"))
        mb = group("host:1.5x", "mobilenetv3")
        agree = [p["int8_agreement_pct"] for p in mb.get("shipped", {}).values() if "int8_agreement_pct" in p]
        if agree:
            acc = [p["top1"]["acc"] for p in mb["shipped"].values() if "top1" in p]
            rows.append(_row(
                "MobileNetV3 (SE, hard-swish) in int8",
                f"host 1.5× ({_seeds(mb['shipped'])}): shipped int8 {statistics.fmean(acc):.2f} %, "
                f"int8 agreement {min(agree):.2f}–{max(agree):.2f} % (goal ≥ 99 %: "
                f"{'met' if min(agree) >= 99 else 'missed'}); {vs(mb, 'width', 'width multiplier')}",
                _date(bm / "compare.json"), "make compare ARGS='--model mobilenetv3 --budgets host:1.5x --seeds 0,1,2 --methods shipped,width'", "The shipped model against the alternatives"))
    else:
        rows.append(_missing("shipped vs width multiplier and Torch-Pruning", "compare.json", "make compare", "The shipped model against the alternatives"))
    rob = _load(root, "robust_peers.json")
    cmd = "python -m benchmarks.robust_peers --write"
    if rob:
        from benchmarks.robust_peers import summarize

        eps = sorted({e for r in rob for e in r["settings"]["eps"]})
        s = {x["metric"]: x for x in summarize(rob, eps)}

        def one(k: str) -> str:
            x = s[k]
            return f"{x['diff']:+.2f} pt [{x['lo']:+.2f}…{x['hi']:+.2f}]"

        e0, e1 = f"{eps[0]:g}", f"{eps[-1]:g}"
        rows.append(_row("robustness at equal latency (shipped − width multiplier)",
                         f"eps {e0}/255, fp32: PGD {one(f'pgd_fp32_eps{e0}')}, APGD-CE {one(f'apgd-ce_fp32_eps{e0}')}; "
                         f"int8: {one(f'pgd_int8_eps{e0}')}, {one(f'apgd-ce_int8_eps{e0}')}; eps {e1}/255 (PGD, fp32): shipped "
                         f"{statistics.fmean(s[f'pgd_fp32_eps{e1}']['shipped']):.1f} %, width "
                         f"{statistics.fmean(s[f'pgd_fp32_eps{e1}']['width']):.1f} % ({_seeds(s[f'pgd_fp32_eps{e0}']['seeds'])}, "
                         f"{rob[0]['settings']['n']:,} test images)", _date(bm / "robust_peers.json"), cmd,
                         "Robustness at equal latency"))
    else:
        rows.append(_missing("robustness at equal latency", "robust_peers.json", cmd, "Robustness at equal latency"))
    rows.append(_zoo(root))
    rows.append(_train_speed(root))
    rows.append(_folder_memory(root))
    return rows


def _folder_memory(root: Path) -> dict:
    """benchmarks/folder_memory.json (benchmarks.folder_memory): a whole build's peak anonymous memory at two folder
    sizes, and the difference the goal bounds."""
    claim, name, where = "memory against folder size", "folder_memory.json", "Memory against folder size"
    cmd = "python -m benchmarks.folder_memory"
    d = _load(root, name)
    if not isinstance(d, dict) or "results" not in d:
        return _other(root, claim, name, cmd, where)
    from benchmarks.folder_memory import GOAL_MB, RAN_THROUGH

    by = {r["scale"]: r for r in d["results"] if r.get("exit") in RAN_THROUGH}
    parts = [f"{k} images: {r['peak_anonymous_mib']:,.0f} MiB" for k, r in by.items()]
    if len(by) == 2:
        a, b = (r["peak_anonymous_mib"] for r in by.values())
        parts.append(f"difference {(b - a) * 1.048576:+,.0f} MB")
    value = (f"peak anonymous memory of a whole build (tiny_resnet, 128 px JPEG folder, 1 + 1 epochs, all processes): "
             f"{'; '.join(parts) or 'no finished run'} (goal: within {GOAL_MB} MB)")
    return _row(claim, value, _date(root / "benchmarks" / name), cmd, where)


def _zoo(root: Path) -> dict:
    """The zoo's claim from benchmarks/zoo.json (benchmarks.zoo): how many of the 20 models shipped at both budgets,
    how many were attempted, and the host latency table's predictions against the measured p90."""
    claim, name, where = "model zoo (torchvision / timm mobile classifiers)", "zoo.json", "Model zoo"
    d = _load(root, name)
    if not isinstance(d, dict) or "results" not in d:
        return _other(root, claim, name, "make zoo", where)
    from benchmarks.zoo import BUDGETS, claim as zoo_claim

    c = zoo_claim(d)
    per = ", ".join(f"{b.replace(':', ' ').replace('x', '×')}: {c['per_budget'][b]}" for b in BUDGETS)
    tried = f"; {len(c['attempted'])} attempted" if len(c["attempted"]) < c["zoo"] else ""
    value = (f"{len(c['shipped_both'])} of {c['zoo']} ship at both budgets (goal 18; {per}{tried}); host p90 "
             f"within ±10 %, one run: {c['host_within_10']} of {c['host_in_run']} predicted at build (goal ≥ 90 %"
             + (f"; {c['host_now_within_10']} by a table probed in it" if c.get("host_now") else "")
             + (f"; run vs its repeat: {c['again_within_10']}" if c.get("again") else "") + ")")
    return _row(claim, value, _date(root / "benchmarks" / name), "make zoo", where)


def _train_speed(root: Path) -> dict:
    """benchmarks/train_speed.json (benchmarks.train_speed): the train stage's images/s against the reference
    DataLoader loop, per case and device, as ratios (both loops measured in the same run)."""
    claim, name, cmd, where = "train-stage throughput", "train_speed.json", "make bench-train", "Train-stage throughput"
    d = _load(root, name)
    if not isinstance(d, dict) or "results" not in d:
        return _other(root, claim, name, cmd, where)
    cases = "; ".join(f"{r['case']} ({r['model']} {r['input'][-1]} px, {r['device']}): {r['train_stage_images_per_s']:.0f} "
                      f"vs {r['reference_images_per_s']:.0f} images/s = {r['ratio']:.2f}×" for r in d["results"])
    m = d.get("machine", {})
    return _row(claim, f"train stage vs a plain DataLoader loop, same run: {cases} ({m.get('cpu', '?')}, "
                       f"{m.get('cores', '?')} cores; goal ≥ 1.0×)", _date(root / "benchmarks" / name), cmd, where)


def _other(root: Path, claim: str, name: str, command: str, where: str) -> dict:
    """A result this summary does not yet read field by field: 'not yet measured' until its json is committed, then
    how many entries it holds and where its section is (state its claim here once its format is settled)."""
    d = _load(root, name)
    if d is None:
        return _missing(claim, name, command, where)
    n = len(d) if isinstance(d, list) else len(next((v for v in d.values() if isinstance(v, list)), [d]))
    return _row(claim, f"{n} result{'s' if n != 1 else ''} in benchmarks/{name}: see BENCHMARKS.md", _date(root / "benchmarks" / name),
                command, where)


def headline_table(rows: list[dict], link: str = "") -> str:
    """The rows as a markdown table; `link` (e.g. "BENCHMARKS.md") makes the section column a link to that file."""
    L = ["| claim | measured | date | reproduce | section |", "|---|---|---|---|---|"]
    for r in rows:
        where = f"[{r['where']}]({link})" if link else r["where"]
        value = r["value"].replace("|", "\\|")  # |error| inside a table cell
        L.append(f"| {r['claim']} | {value} | {r['date']} | `{r['command']}` | {where} |")
    return "\n".join(L)


def summary_section(rows: list[dict]) -> str:
    return "\n".join([
        f"<!-- {SUMMARY_TAG}:begin -->", "## Summary: the current default", "",
        "`make build TARGET=rpi4` with the default flags: ResNet-8 on Fashion-MNIST, int8, the Raspberry Pi 4 budget. "
        "Generated from the committed results by `python -m benchmarks --summary-only` (README's headline table is "
        "the same rows); each section below says how its numbers were made.", "",
        headline_table(rows), f"<!-- {SUMMARY_TAG}:end -->"]) + "\n"


def readme_section(rows: list[dict]) -> str:
    return "\n".join([f"<!-- {README_TAG}:begin -->", headline_table(rows, "BENCHMARKS.md"), f"<!-- {README_TAG}:end -->"]) + "\n"


def write_summary(root: Path = ROOT) -> list[Path]:
    """Regenerate BENCHMARKS.md's summary and README.md's headline table from the committed results; returns the
    files that changed."""
    from edge_sparse import _io

    rows = headline(root)
    bm, readme = root / "BENCHMARKS.md", root / "README.md"
    old_bm = bm.read_text() if bm.is_file() else ""
    new_bm = assemble(old_bm, {SUMMARY_TAG: summary_section(rows)}, root)
    text = readme.read_text()
    begin, end = f"<!-- {README_TAG}:begin -->", f"<!-- {README_TAG}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"error: {readme}: no {begin} ... {end} markers; put them where the headline table goes")
    new_readme = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", lambda _: readme_section(rows), text, flags=re.S)
    changed = []
    for path, old, new in ((bm, old_bm, new_bm), (readme, text, new_readme)):
        if new != old:
            _io.write_text(path, new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    raise SystemExit(main())
