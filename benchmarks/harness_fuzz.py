"""`python -m benchmarks.harness_fuzz --bundle dist/rpi4 [-n 200]`: bench.py on damaged models.

Each case copies the bundle, damages `model.tflite` (flipped bytes, a zeroed run, random bytes written
over a run, a cut, or a duplicated range; seeded), and regenerates `manifest.json` so the sha256 check
passes and the damaged bytes reach the runtime — the worst case: a model that was broken before the
bundle was hashed. bench.py then runs with a short timing loop. Every run must end with exit 0/1 (it
still ran), or 2 with one `error:` line; never a signal, a hang, a traceback, or exit 3 (internal error).

Writes benchmarks/out/harness-fuzz.json (resumable: finished cases are kept) and benchmarks/harness-fuzz.md,
which `make benchmarks` appends to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import splice

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
KINDS = ("flip", "zero-run", "random-run", "cut", "duplicate")


def damage(data: bytes, case: int) -> tuple[bytes, str]:
    rng = np.random.default_rng(case)
    b = bytearray(data)
    kind = KINDS[case % len(KINDS)]
    n = len(b)
    if kind == "flip":
        for p in rng.integers(0, n, size=int(rng.integers(1, 16))):
            b[p] ^= 1 << int(rng.integers(0, 8))
        return bytes(b), kind
    start = int(rng.integers(0, n - 1))
    length = int(rng.integers(1, max(2, n // 8)))
    if kind == "zero-run":
        b[start:start + length] = bytes(len(b[start:start + length]))
    elif kind == "random-run":
        seg = rng.integers(0, 256, size=len(b[start:start + length]), dtype=np.uint8).tobytes()
        b[start:start + length] = seg
    elif kind == "cut":
        b = b[:start]
    else:
        b = b[:start] + b[start:start + length] + b[start:]
    return bytes(b), kind


def classify(rc: int | None, stderr: str) -> str:
    if rc is None:
        return "hang"
    if rc < 0:
        return "signal"
    if "Traceback" in stderr:
        return "traceback"
    if rc == 3:
        return "internal"
    if rc in (0, 1):
        return "ran"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "refused"
    return f"unclear(rc={rc})"


def run_case(bundle: Path, case: int, timeout: float) -> dict:
    from edge_sparse.bundle import write_manifest

    with tempfile.TemporaryDirectory(prefix="edge_sparse_fuzz_") as tmp:
        b = Path(tmp) / "b"
        shutil.copytree(bundle, b)
        (b / "manifest.json").unlink()
        data, kind = damage((bundle / "model.tflite").read_bytes(), case)
        (b / "model.tflite").write_bytes(data)
        write_manifest(b)
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "bench.py", "--runs", "5", "--warmup-runs", "0", "--eval-limit", "20",
                                "--load-timeout", str(timeout / 2)], cwd=b, capture_output=True, text=True,
                               timeout=timeout)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, ""
    last = (err.strip().splitlines() or [""])[-1]
    return {"case": case, "kind": kind, "rc": rc, "outcome": classify(rc, err), "line": last[:300],
            "seconds": round(time.perf_counter() - t0, 2)}


def markdown(res: dict) -> str:
    cases = res["cases"]
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    bad = [c for c in cases if c["outcome"] not in ("ran", "refused")]
    crashed_child = sum("crashed" in c["line"] for c in cases)
    lines = [
        "## Harness on damaged models",
        "",
        f"`python -m benchmarks.harness_fuzz` ({res['date']}, {res['runtime']}): {len(cases)} damaged copies of "
        f"`{res['bundle']}/model.tflite` ({', '.join(KINDS)}; seeded), manifest regenerated so the damage reaches "
        "the runtime.",
        "",
        "| outcome | runs |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in sorted(counts.items())],
        "",
        f"Signals, hangs, tracebacks or internal errors: **{len(bad)}** of {len(cases)}. "
        f"The runtime crashed in the load-check child (reported as exit 2, \"the runtime crashed\") in "
        f"{crashed_child} of them.",
        "",
    ]
    for c in bad[:10]:
        lines.append(f"- case {c['case']} ({c['kind']}): {c['outcome']}, `{c['line']}`")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io

    p = argparse.ArgumentParser(prog="python -m benchmarks.harness_fuzz")
    p.add_argument("--bundle", default="dist/rpi4")
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    bundle = Path(a.bundle)
    if not (bundle / "bench.py").is_file() or not (bundle / "model.tflite").is_file():
        print(f"error: {bundle}: not a bundle (bench.py and model.tflite expected); run `make build` first",
              file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "harness-fuzz.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    if res.get("bundle_sha") != (bundle / "manifest.json").read_text():
        res = {"bundle_sha": (bundle / "manifest.json").read_text(), "cases": []}
    try:
        from ai_edge_litert import interpreter  # noqa: F401
        import importlib.metadata as md
        runtime = f"ai-edge-litert {md.version('ai-edge-litert')}"
    except Exception:
        runtime = "unknown runtime"
    res.update(bundle=str(a.bundle), date=time.strftime("%Y-%m-%d"), runtime=runtime)
    done = {c["case"] for c in res["cases"]}
    for case in range(a.n):
        if case in done:
            continue
        c = run_case(bundle, case, a.timeout)
        res["cases"].append(c)
        print(f"case {case:3d} {c['kind']:<10} rc={c['rc']} {c['outcome']:<9} {c['line'][:100]}", flush=True)
        if len(res["cases"]) % 10 == 0:
            _io.write_json(path, res)
    res["cases"] = sorted((c for c in res["cases"] if c["case"] < a.n), key=lambda c: c["case"])
    _io.write_json(path, res)
    md_text = markdown(res)
    md_text = f"<!-- harness-fuzz:begin -->\n{md_text}<!-- harness-fuzz:end -->\n"
    _io.write_text(ROOT / "benchmarks" / "harness-fuzz.md", md_text)
    splice(md_text, "harness-fuzz")
    print(md_text)
    return 0 if all(c["outcome"] in ("ran", "refused") for c in res["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
