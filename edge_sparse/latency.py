"""Latency: the per-target model that predicts p90 on the device, host measurement, calibration.

In:  a candidate's MACs and compute-layer count (deterministic), or a .tflite to time on this host.
Out: predicted p90 ms on the target (`Target.predict_ms`); measured host percentiles (LiteRT + XNNPACK).
Run: `edge-sparse calibrate rpi4 bench.json` rescales `targets/rpi4.toml`'s coefficients so its
     prediction matches the p90 the on-device harness measured (the JSON `bench.py --json` writes).

Why a MAC + layer model: the search must be reproducible (same seed, same chosen sparsity), which a
timing on a shared, noisy host is not; and structured pruning with kernel-friendly channel multiples
makes int8 XNNPACK latency track MACs (BENCHMARKS.md measures latency ratio ÷ MAC ratio).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError
from edge_sparse.targets import Target, load_target


def compute_layers(layer_stats: Sequence) -> int:
    return len(layer_stats)


def predict(target: Target, macs: int, layers: int) -> float:
    return round(target.predict_ms(macs, layers), 4)


def percentiles(samples_ms: Sequence[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def measure_tflite(path: Path, threads: int = 1, runs: int = 200, warmup: int = 20) -> dict:
    """Time single-image invokes of a .tflite with ai-edge-litert (XNNPACK) on this host."""
    from edge_sparse.verify import tflite_interpreter

    it = tflite_interpreter(path, threads)
    inp = it.get_input_details()[0]
    x = np.zeros(inp["shape"], dtype=inp["dtype"])
    it.set_tensor(inp["index"], x)
    for _ in range(warmup):
        it.invoke()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        t.append((time.perf_counter() - t0) * 1e3)
    return percentiles(t)


def calibrate(target_name: str, report_path: Path) -> dict:
    """Rescale a profile's latency coefficients to the p90 a device run measured; rewrite the TOML.

    The report is `bench.py --json` output: it carries the measured p90 and the model's MACs and
    layer count from metadata.json. All three coefficients are scaled by measured / predicted, so the
    profile's split between fixed, per-layer and per-MAC cost is kept and its total now fits the device.
    """
    t = load_target(target_name)
    try:
        rep = json.loads(Path(report_path).read_text())
        measured = float(rep["latency_ms"]["p90"])
        macs = int(rep["model"]["macs"])
        layers = int(rep["model"]["layers"])
    except FileNotFoundError:
        raise EdgeSparseError(f"{report_path}: no such harness report") from None
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeSparseError(f"{report_path}: not a bench.py --json report (missing {e})") from None
    if rep.get("target") not in (None, t.name):
        raise EdgeSparseError(f"{report_path}: report is for target {rep.get('target')!r}, not {t.name!r}")
    if not measured > 0:
        raise EdgeSparseError(f"{report_path}: measured p90 must be > 0, got {measured}")
    predicted = t.predict_ms(macs, layers)
    k = measured / predicted
    lm = t.latency_model
    new = {"overhead_ms": lm.overhead_ms * k, "ms_per_mmac": lm.ms_per_mmac * k, "ms_per_layer": lm.ms_per_layer * k}
    text = Path(t.path).read_text()
    section = text[text.index("[latency_model]"):]
    head = text[: text.index("[latency_model]")]
    for key, v in new.items():
        section, n = re.subn(rf"(?m)^{key}\s*=\s*[-+0-9.eE]+", f"{key} = {v:.6g}", section)
        if n != 1:
            raise EdgeSparseError(f"{t.path}: cannot find [latency_model] {key} to update")
    device = rep.get("device", {}).get("cpu_model", "device")
    note = (f"Calibrated {time.strftime('%Y-%m-%d')} from {Path(report_path).name}: measured p90 {measured:.4g} ms "
            f"on {device} vs predicted {predicted:.4g} ms (x{k:.3g}).")
    section = re.sub(r'(?s)source = """(.*?)"""', lambda m: f'source = """{m.group(1)}\n{note}"""', section, count=1)
    _io.write_text(t.path, head + section)
    load_target(t.path)  # the rewritten profile must still validate
    return {"target": t.name, "measured_p90_ms": measured, "predicted_p90_ms": predicted, "scale": k, **new}
