"""How steadily this host runs one int8 op: the floor under any host latency prediction's error.

In:  one int8 probe (`probes.build_probe`: a 3x3 conv, 48x48x64 -> 64, ~1 ms on a 2-core Xeon), timed in back-to-back
     windows of 100 invokes (1 thread, ai-edge-litert + XNNPACK), each window on vCPU 0 and 1 in turn
     (`sched_setaffinity`), for `--seconds` (default 120).
Out: benchmarks/host_speed.json and, with --write, the "Host speed" section of BENCHMARKS.md: the windows' p50 spread
     (5th / 50th / 95th percentile, per vCPU), the share of windows that ran 1.25x or more slower than the fastest
     tenth (the slow spells), and how often two consecutive 10-second stretches give a p90 within ±10 % of each other:
     what the zoo's host goal (a table's prediction within ±10 % of a measured p90) can be judged against.
Run: `python -m benchmarks.host_speed --write` (2 minutes; nothing else should run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from benchmarks import ROOT, publish

TAG = "host-speed"
RESULTS = ROOT / "benchmarks" / "host_speed.json"
WINDOW = 100  # invokes a window (~0.1 s)
STRETCH_S = 10.0  # seconds pooled into one p90, as a build or a retime pools its timings
SLOW = 1.25  # a window this much slower than the fastest tenth's p50 ran in a slow spell


def run(seconds: float) -> dict:
    import tempfile
    from pathlib import Path

    from edge_sparse.latency import probes
    from edge_sparse.latency.host import cpu_facts
    from edge_sparse.latency.ops import Op
    from edge_sparse.verify import tflite_interpreter

    op = Op("conv", 48, 48, 64, 64, k=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.tflite"
        path.write_bytes(probes.build_probe(op))
        it = tflite_interpreter(path, 1)
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        cpus = sorted(os.sched_getaffinity(0))
        windows = []  # (seconds since start, vCPU, [invoke ms])
        try:
            for _ in range(20):
                it.invoke()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for cpu in cpus:
                    os.sched_setaffinity(0, {cpu})
                    ts = []
                    for _ in range(WINDOW):
                        a = time.perf_counter()
                        it.invoke()
                        ts.append((time.perf_counter() - a) * 1e3)
                    windows.append((time.perf_counter() - t0, cpu, ts))
        finally:
            os.sched_setaffinity(0, set(cpus))
    p50 = np.array([np.percentile(ts, 50) for _, _, ts in windows])
    fast = float(np.percentile(p50, 10))
    per_cpu = {str(c): [round(float(v), 4) for v in np.percentile([p for (_, cc, _), p in zip(windows, p50) if cc == c],
                                                                  [5, 50, 95])] for c in cpus}
    stretches: list[list[float]] = []
    for t, _, ts in windows:
        k = int(t // STRETCH_S)
        while len(stretches) <= k:
            stretches.append([])
        stretches[k].extend(ts)
    p90s = [float(np.percentile(s, 90)) for s in stretches if len(s) >= 5 * WINDOW]
    pairs = list(zip(p90s, p90s[1:]))
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {**cpu_facts(), "python": platform.python_version()},
            "probe": op.key, "seconds": seconds, "window_invokes": WINDOW, "windows": len(windows),
            "window_p50_ms": [round(float(v), 4) for v in np.percentile(p50, [5, 50, 95])], "per_cpu_p50_ms": per_cpu,
            "slow_share": round(float(np.mean(p50 >= SLOW * fast)), 3),
            "slow_to_fast": round(float(np.percentile(p50, 95)) / fast, 3),
            "stretch_s": STRETCH_S, "stretch_p90_ms": [round(v, 4) for v in p90s],
            "stretch_pairs_within_10": sum(abs(b / a - 1) <= 0.10 for a, b in pairs), "stretch_pairs": len(pairs)}


def section(r: dict) -> str:
    w = r["window_p50_ms"]
    cpu = "; ".join(f"vCPU {c}: {v[0]:.3f} / {v[1]:.3f} / {v[2]:.3f}" for c, v in r["per_cpu_p50_ms"].items())
    return "\n".join([
        f"<!-- {TAG}:begin -->", "## Host speed: how steadily this machine runs one op (`python -m benchmarks.host_speed`)", "",
        f"Measured {r['date']} on {r['machine']['cpu']} (AVX-512 VNNI {'yes' if 'avx512_vnni' in r['machine'].get('isa', []) else 'no'}),"
        f" nothing else of ours running: one int8 probe (`{r['probe']}`), {r['windows']} back-to-back windows of "
        f"{r['window_invokes']} invokes over {r['seconds']:.0f} s, 1 thread, alternating between the vCPUs.", "",
        f"- Windows' p50 (5th / 50th / 95th percentile): {w[0]:.3f} / {w[1]:.3f} / {w[2]:.3f} ms ({cpu}); the 95th is "
        f"{r['slow_to_fast']:.2f}× the fastest tenth, and {100 * r['slow_share']:.0f} % of the windows ran {SLOW}× "
        f"or more slower than it.",
        f"- The p90 of consecutive {r['stretch_s']:.0f}-second stretches (every invoke in them pooled): "
        f"{r['stretch_pairs_within_10']} of {r['stretch_pairs']} neighbouring pairs within ±10 % of each other "
        f"({', '.join(f'{v:.3f}' for v in r['stretch_p90_ms'])} ms).", "",
        "A prediction checked against one p90 can be right to within what the same p90 repeats to: where neighbouring "
        "stretches disagree by more than ±10 %, so will a table probed at one moment and a model timed at the next "
        "(the zoo's host goal; docs/known-gaps.md).", f"<!-- {TAG}:end -->"]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.host_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--write", action="store_true", help="splice the section into BENCHMARKS.md")
    ap.add_argument("--table-only", action="store_true", help="run nothing: the section from the json")
    a = ap.parse_args(argv)
    if a.table_only:
        return publish(section(json.loads(RESULTS.read_text())), TAG, a.write)
    r = run(a.seconds)
    RESULTS.write_text(json.dumps(r, indent=1) + "\n")
    return publish(section(r), TAG, a.write)


if __name__ == "__main__":
    raise SystemExit(main())
