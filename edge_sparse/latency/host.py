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
    from edge_sparse.latency.probes import VERSION

    f = cpu_facts()
    ident = json.dumps([f["cpu"], f["machine"], f["isa"], runtime_version(), threads, VERSION])  # older probes: afresh
    return Path(cache_dir) / f"host-{hashlib.sha256(ident.encode()).hexdigest()[:12]}-t{threads}.json"


def host_table(ops: Sequence[Op], threads: int, *, cache_dir: Path | str = "build/latency", log=None,
               runs: int = 100, rounds: int = 20, refresh: bool = False, drift_tolerance: float = 0.10,
               sample: int = 24) -> LatencyTable:
    """A host table whose entries include every op of `ops` exactly (probing those the cache lacks).

    A cached table is re-checked first: `sample` of its probes (and the overhead probe) are timed again
    now, and when their median time differs by more than `drift_tolerance` from the table's, the table
    is dropped and every op of `ops` probed again (a shared VM's speed drifts by up to ~20 % over hours;
    ~3 s for the check, ~20 s to re-probe the default ResNet-8). `refresh` re-probes without asking.
    """
    path = cache_path(threads, cache_dir)
    table = None
    if path.is_file():
        try:
            table = LatencyTable.load(path)
        except EdgeSparseError as e:
            if log:
                log(f"  latency: ignoring a damaged host table ({e}); re-profiling")
    want = _by_key(ops)
    if table is not None and refresh:
        table = None
    if table is not None and sample > 0 and str(path) not in _CHECKED and any(k in table.entries for k in want):
        drift = _drifted(table, want, threads, drift_tolerance, sample, runs, rounds)
        _CHECKED.add(str(path))
        if drift is not None:
            if log:
                log(f"  latency: this host now runs the cached table's probes at {drift:.2f}x the time they took on "
                    f"{table.provenance.get('date', '?')} (tolerance ±{drift_tolerance:.0%}); re-probing")
            table = None  # the whole table is stale, not only these ops: other shapes are probed when next needed
    missing = want if table is None else {k: o for k, o in want.items() if k not in table.entries}
    if not missing and table is not None:
        return table
    facts = cpu_facts()
    if log:
        log(f"  latency: probing {len(missing)} int8 op shapes on this host ({facts['cpu']}, {threads} threads)")
    new = _probe(list(missing.values()), threads, runs, rounds)
    table = new if table is None else table.merged(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    _CHECKED.add(str(path))
    return table


_CHECKED: set = set()  # host tables this process has checked for drift (or probed): once per process is enough


def recheck(table: LatencyTable, ops: Sequence[Op], threads: int, *, log=None, tolerance: float = 0.10,
            sample: int = 24, runs: int = 100, rounds: int = 20) -> LatencyTable:
    """`table` checked against this host as it runs now, where the ops `ops` are priced: probed again, all of them,
    when a sample of its probes (`_drift`) takes more than `tolerance` longer or shorter than it did.

    A build probes its table before it trains and times its dense model whole after (minutes to hours later): the
    dense timing prices the weights against the table, so a table probed at another speed of this shared VM (it moves
    by ~20 % over hours; squeezenet1_1's zoo build on 2026-12-06 found its table's probes 1.35x off five minutes after
    probing them) would carry that difference into every prediction of the build. The table is re-checked right
    before the dense model is timed."""
    want = _by_key(ops)
    drift = _drifted(table, want, threads, tolerance, sample, runs, rounds)
    if drift is None:
        return table
    if log:
        log(f"  latency: this host now runs the table's probes at {drift:.2f}x the time they took when probed "
            f"({table.provenance.get('date', '?')}; tolerance ±{tolerance:.0%}): probing its {len(want)} op shapes "
            f"again before the dense model is timed against them")
    new = _probe(list(want.values()), threads, runs, rounds)
    new.provenance["drift_before_reprobe"] = round(drift, 4)
    if table.path:
        new.save(Path(table.path))
        _CHECKED.add(str(table.path))
    return new


def _probe(ops: list[Op], threads: int, runs: int, rounds: int) -> LatencyTable:
    from edge_sparse.latency import probes

    with tempfile.TemporaryDirectory(prefix="edge_sparse_probes_") as tmp:
        suite_dir = probes.write_suite(ops, Path(tmp))
        suite = json.loads((suite_dir / "probes.json").read_text())
        timings = probes.time_suite(suite_dir, threads, runs=runs, rounds=rounds)
    return LatencyTable.from_timings(suite, timings, provenance(
        threads, f"bench.py --probes: one int8 op per .tflite, {runs} invokes in {rounds} interleaved rounds; "
                 f"op cost = probe p50 - overhead probe p50 (or - its context's probe p50: probes.baseline)"))


def _by_key(ops: Sequence[Op]) -> dict[str, Op]:
    """`ops` by table key, unnamed (a table prices shapes, not modules)."""
    return {o.replace(name="").key: o.replace(name="") for o in ops}


def _drifted(table: LatencyTable, want: dict[str, Op], threads: int, tolerance: float, sample: int, runs: int,
             rounds: int) -> float | None:
    """How far this host now runs `table`'s probes for the ops of `want` it holds (`_drift`, now / then), where that
    is beyond `tolerance`; None where it is within it, or the table holds none of them."""
    have = [o for k, o in want.items() if k in table.entries]
    if not have:
        return None
    drift = _drift(table, have, threads, sample, runs, rounds)
    return drift if abs(drift - 1) > tolerance else None


def provenance(threads: int, how: str) -> dict:
    """Where a table measured on this host comes from: its CPU, runtime and version, threads, date, and `how`."""
    return {"source": "measured", "device": "this host", **cpu_facts(), "runtime": "tflite",
            "runtime_version": runtime_version(), "threads": int(threads), "date": now_iso(), "how": how}


def _drift(table: LatencyTable, ops: list[Op], threads: int, sample: int, runs: int, rounds: int) -> float:
    """Median (now / then) of whole-probe p50 times over `sample` of `ops` spread across their cost range."""
    from edge_sparse.latency.probes import priced_in_context

    ops = [o for o in ops if not priced_in_context(o.key)] or ops  # a whole probe's time, not a difference of two
    ranked = sorted(ops, key=lambda o: (table.entries[o.key]["p50"], o.key))
    picked = [ranked[round(i * (len(ranked) - 1) / max(1, sample - 1))] for i in range(min(sample, len(ranked)))]
    now = _probe(list({o.key: o for o in picked}.values()), threads, runs, rounds)
    ov_then, ov_now = table.overhead["p50"], now.overhead["p50"]
    ratios = [ov_now / ov_then] + [(now.entries[k]["p50"] + ov_now) / (table.entries[k]["p50"] + ov_then)
                                   for k in now.entries]
    return float(sorted(ratios)[len(ratios) // 2])
