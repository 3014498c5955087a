"""The `host` target's latency table: measured on the machine that builds, cached per CPU and runtime.

In:  the ops a model (and every width choice of it on the channel grid) runs; the thread count.
Out: a `LatencyTable` covering them, from `build/latency/host-<cpu>-<runtime>-t<threads>.json`; what
     the cache lacks is probed and timed now (`bench.py --probes`, the bundle's own harness).
Run: `edge-sparse profile --target host` (or `make profile TARGET=host`), or implicitly by any build
     or `predict_latency` for the host target.

Never a fixed coefficient fitted elsewhere: the cache key is the CPU model and its int8-relevant ISA
(AVX2, AVX-512, VNNI, AMX — XNNPACK picks kernels by them), the runtime's version and the threads.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Sequence

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import Op
from edge_sparse.latency.table import LatencyTable, now_iso

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def cpu_facts() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                model = v.strip()
            elif k in ("flags", "features"):
                flags |= set(v.split())
    except OSError:
        pass
    return {"cpu": model, "machine": platform.machine(), "isa": sorted(f for f in ISA_FLAGS if f in flags),
            "cores": os.cpu_count()}


def runtime_version() -> str:
    from importlib.metadata import version

    return f"ai-edge-litert {version('ai-edge-litert')}"


def cache_path(threads: int, cache_dir: Path | str = "build/latency") -> Path:
    f = cpu_facts()
    ident = json.dumps([f["cpu"], f["machine"], f["isa"], runtime_version(), threads])
    return Path(cache_dir) / f"host-{hashlib.sha256(ident.encode()).hexdigest()[:12]}-t{threads}.json"


def host_table(ops: Sequence[Op], threads: int, *, cache_dir: Path | str = "build/latency", log=None,
               runs: int = 100, rounds: int = 5) -> LatencyTable:
    """A host table whose entries include every op of `ops` exactly (probing those the cache lacks)."""
    from edge_sparse.latency import probes

    path = cache_path(threads, cache_dir)
    table = None
    if path.is_file():
        try:
            table = LatencyTable.load(path)
        except EdgeSparseError as e:
            if log:
                log(f"  latency: ignoring a damaged host table ({e}); re-profiling")
    missing = {o.replace(name="").key: o.replace(name="") for o in ops}
    if table is not None:
        missing = {k: o for k, o in missing.items() if k not in table.entries}
    if not missing and table is not None:
        return table
    facts = cpu_facts()
    if log:
        log(f"  latency: probing {len(missing)} int8 op shapes on this host ({facts['cpu']}, {threads} threads)")
    with tempfile.TemporaryDirectory(prefix="edge_sparse_probes_") as tmp:
        suite_dir = probes.write_suite(missing.values(), Path(tmp))
        suite = json.loads((suite_dir / "probes.json").read_text())
        timings = probes.time_suite(suite_dir, threads, runs=runs, rounds=rounds)
    prov = {"source": "measured", "device": "this host", **facts, "runtime": "tflite",
            "runtime_version": runtime_version(), "threads": int(threads), "date": now_iso(),
            "how": f"bench.py --probes: one int8 op per .tflite, {runs} invokes in {rounds} interleaved rounds; "
                   f"op cost = probe p50 - overhead probe p50"}
    new = LatencyTable.from_timings(suite, timings, prov)
    table = new if table is None else table.merged(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    return table
