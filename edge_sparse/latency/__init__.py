"""Latency: measured kernel-level tables, the predictor the search prices widths with, host timing.

The sub-package: `ops` (the int8 ops a model becomes), `probes` (one-op int8 .tflite probes),
`table` (measured per-op costs + interpolation), `host` (this machine's table, cached), `device`
(`make profile`: the probe suite timed on a Pi/phone with the harness), `predict` (`resolve`,
`predict_latency`), `hostcheck` (predicted vs measured on random pruned variants), `nb201` + `check`
(the estimate against real Raspberry Pi 4 / Pixel 3 measurements).

This module keeps the host timing helpers. `edge-sparse calibrate` is now `profile` (edge_sparse.latency.device):
the one-number rescale of the MAC + layer estimate it did before is gone.

Reproducibility: a build prices widths with a table, never with a timing taken during the search, so
the same seed and the same table choose the same widths; the host table is measured once per CPU,
runtime and thread count, reused from build/latency/, and re-probed when this machine's speed has
drifted by more than 10 % since (a re-probed table re-runs the host build's search).
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np


def predict_latency(*args, **kw) -> dict:
    """`edge_sparse.latency.predict.predict_latency` (imported lazily: torch and TF load on demand)."""
    from edge_sparse.latency.predict import predict_latency as f

    return f(*args, **kw)


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


def measure_many(paths: Sequence[Path], threads: int = 1, runs: int = 200, rounds: int = 10, warmup: int = 10) -> list[dict]:
    """Percentiles of several .tflite models timed side by side: `rounds` interleaved passes, so the
    machine's drift and load land on every model alike (ratios between them stay meaningful). The more
    rounds, the finer the interleaving: on a VM whose speed switches within seconds, a round should
    take well under a second."""
    from edge_sparse.verify import tflite_interpreter

    its = []
    for p in paths:
        it = tflite_interpreter(Path(p), threads)
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
            x = rng.integers(info.min, info.max, d["shape"]).astype(d["dtype"]) if info else \
                rng.standard_normal(d["shape"]).astype(d["dtype"])
            it.set_tensor(d["index"], x)
        for _ in range(warmup):
            it.invoke()
        its.append(it)
    samples: list[list[float]] = [[] for _ in its]
    per = max(1, runs // rounds)
    order = list(range(len(its)))
    for r in range(rounds):
        random.Random(r).shuffle(order)  # a fresh order each round: no model always follows the same one
        for i in order:
            it = its[i]
            it.invoke()  # untimed: the first invoke after switching models runs from a cold cache (~1.5x slower
            # here), an artefact of interleaving that a device running one model never sees (as bench.py --probes)
            for _ in range(per):
                t0 = time.perf_counter()
                it.invoke()
                samples[i].append((time.perf_counter() - t0) * 1e3)
    return [percentiles(s) for s in samples]
