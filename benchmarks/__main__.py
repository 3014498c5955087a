"""`make benchmarks` / `python -m benchmarks`: the shipped model against the dense one, in one run on
one machine, so every claim is a ratio measured side by side.

Measures (ai-edge-litert + XNNPACK, 1 and 2 threads, median of >= 300 interleaved runs after warm-up):
dense fp32 .tflite, dense int8, pruned fp32, shipped pruned int8; ONNX Runtime fp32 vs int8 (dense and
pruned); torch eager dense vs pruned. For each: latency, MACs, params, size, top-1 on the held-out
images. Derived: shipped int8 vs dense fp32 speedup, latency ratio / MAC ratio for pruning alone, int8
agreement. Also: the default build's per-stage wall time and peak memory, a dense baseline trained
without the sparsity objective for the same number of epochs (the fair accuracy reference), and the
harness's median against LiteRT's own benchmark tool on the same model.

Writes BENCHMARKS.md (ending with benchmarks/notes.md: figures other commands measured), benchmarks/results.json, and keeps every timed model in benchmarks/out/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
    from edge_sparse import models, verify
    from edge_sparse.config import BuildConfig
    from edge_sparse.data import ImageSet
    from edge_sparse.pipeline import _eval_set, run
    from edge_sparse.train import predict

    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--target", default="rpi4")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=30)
    p.add_argument("--no-baseline", action="store_true", help="skip training the no-sparsity dense baseline")
    a = p.parse_args(argv)
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
    (ROOT / "BENCHMARKS.md").write_text(render(results))
    print((ROOT / "BENCHMARKS.md").read_text())
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render(r: dict) -> str:
    L = ["# BENCHMARKS", "",
         f"Measured {r['date']} on {r['machine']['cpu']} ({r['machine']['cores']} cores), Python {r['machine']['python']}, "
         f"torch {r['machine'].get('torch')}, tensorflow {r['machine'].get('tensorflow')}, onnxruntime {r['machine'].get('onnxruntime')}, "
         f"ai-edge-litert {r['machine'].get('ai-edge-litert')}. Re-run with `make benchmarks` (after `make build`); "
         f"the timed models stay in `benchmarks/out/`, the numbers in `benchmarks/results.json`.",
         "", "This machine is shared and noisy: read **ratios** measured side by side (runners interleaved round by "
         f"round, median of {r['rows']['tflite dense fp32']['1t']['n']} single-image runs each after warm-up), not absolute times.", "",
         f"Default model ({r['target']} build): sparsity {r['shipped_sparsity']:.2f}; accuracy on {r['eval_images']} held-out test images.", "",
         "| model | runtime | MACs | params | size (KiB) | top-1 (%) | agreement vs torch (%) | median 1 thread (ms) | median 2 threads (ms) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        rt = name.split(" ")[0]
        L.append(f"| {name} | {rt} | {row['macs']:,} | {row['params']:,} | {row['size_kb'] if row['size_kb'] is not None else '–'} | "
                 f"{row['top1']:.2f} | {row['agreement_vs_torch']:.2f} | {row['1t']['median_ms']:.4f} | {row['2t']['median_ms']:.4f} |")
    L += ["", "## Derived (goal in brackets)", "", "| | 1 thread | 2 threads |", "|---|---|---|"]
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
    L += ["", "## Accuracy", "",
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
    L += ["", "## Build (default `make build TARGET=rpi4`, when it was built)", "",
          "| stage | wall time (s) |", "|---|---|"]
    for k, v in st.items():
        L.append(f"| {k} | {v:.1f} |")
    L.append(f"| **total** | **{sum(st.values()):.1f}** |")
    L.append(f"\nPeak memory (max RSS) of the build process while it computed the stages: {r['build']['peak_rss_mb']} MiB.")
    L += ["", "## Harness vs LiteRT's benchmark tool (shipped model)", "",
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
    notes = ROOT / "benchmarks" / "notes.md"  # measured by other commands (study, recipe runs): kept verbatim
    if notes.is_file():
        L += ["", notes.read_text().strip()]
    for extra in [ROOT / "benchmarks" / "latency.md", ROOT / "benchmarks" / "latency-check.md", ROOT / "benchmarks" / "harness-fuzz.md", *sorted((ROOT / "benchmarks").glob("seeds-*.md"))]:
        if extra.is_file():  # written by `python -m benchmarks.latency` / `.seeds`: kept verbatim
            L += ["", extra.read_text().strip()]
    # every other section another command spliced in between markers (recipes, compare, ...): kept verbatim
    import re

    text = "\n".join(L)
    old = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").is_file() else ""
    for m in re.finditer(r"<!-- ([\w:.-]+):begin -->.*?<!-- \1:end -->", old, flags=re.S):
        if f"<!-- {m.group(1)}:begin -->" not in text:
            L += ["", m.group(0)]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
