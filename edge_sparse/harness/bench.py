#!/usr/bin/env python3
"""edge_sparse on-device harness: latency percentiles, accuracy and the budget verdict for one bundle.

Standalone: Python >= 3.9, numpy, and one runtime (ai_edge_litert, tflite_runtime, tensorflow or
onnxruntime). It imports nothing of edge_sparse and reads everything it needs (preprocessing,
quantisation, budget) from the bundle beside it.

    python3 bench.py                      # model.tflite, threads from the target profile
    python3 bench.py --runtime onnxruntime --json result.json
    python3 bench.py --mlperf             # MLPerf single-stream: >= 1024 queries and >= 60 s, p90

Exit codes: 0 within budget, 1 over budget, 2 bad input (message on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime")
TFLITE_RUNTIMES = RUNTIMES[:3]


class BadInput(Exception):
    """Anything the user can fix; printed as one line, exit 2."""


def _np():
    try:
        import numpy as np
    except ImportError:
        raise BadInput("numpy is not installed; install it with `pip install 'numpy<2'`")
    return np


# --------------------------------------------------------------------------- bundle files

def load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} is missing; run bench.py from inside the bundle directory")
    except ValueError as e:
        raise BadInput(f"{path}: {what} is not valid JSON ({e})")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model(model_path, manifest_path):
    """Refuse a model whose sha256 differs from manifest.json, before any runtime sees it."""
    if not os.path.isfile(model_path):
        raise BadInput(f"{model_path}: model file not found")
    manifest = load_json(manifest_path, "manifest.json")
    name = os.path.basename(model_path)
    entry = manifest.get("files", {}).get(name)
    if entry is None:
        raise BadInput(f"{model_path}: not listed in {manifest_path}; only the bundle's own models can be verified")
    got = sha256(model_path)
    if got != entry["sha256"]:
        raise BadInput(f"{model_path}: sha256 {got[:16]}… does not match manifest.json ({entry['sha256'][:16]}…); "
                       f"the file is corrupt or was replaced — copy the bundle again")
    return got


def check_tflite_bounds(data):
    """Walk the .tflite flatbuffer's Model.buffers and return a problem string, or None.

    A truncated file makes some runtimes crash (segfault) while loading it; this check turns that
    into a clear error before any runtime sees the bytes.
    """
    import struct

    n = len(data)
    if n < 16 or data[4:8] != b"TFL3":
        return "not a TFLite flatbuffer (no TFL3 identifier)"

    def u32(p):
        if p < 0 or p + 4 > n:
            raise IndexError(p)
        return struct.unpack_from("<I", data, p)[0]

    def field(table, i):
        vt = table - struct.unpack_from("<i", data, table)[0]
        vt_size = struct.unpack_from("<H", data, vt)[0]
        if 4 + 2 * i + 2 > vt_size:
            return None
        fo = struct.unpack_from("<H", data, vt + 4 + 2 * i)[0]
        return table + fo if fo else None

    def vector(p):
        v = p + u32(p)
        length = u32(v)
        if v + 4 + length > n:
            raise IndexError(v)
        return v + 4, length

    try:
        root = u32(0)
        if root + 4 > n:
            return "truncated (root table past the end of the file)"
        f = field(root, 4)  # Model.buffers
        if f is None:
            return None
        start, count = vector(f)
        for k in range(count):
            ep = start + 4 * k
            b = ep + u32(ep)
            d = field(b, 0)  # Buffer.data
            if d is not None:
                s, length = vector(d)
                if s + length > n:
                    return "truncated (a weight buffer runs past the end of the file)"
            off, size = field(b, 1), field(b, 2)  # Buffer.offset / size (large models)
            if off is not None and size is not None:
                o = struct.unpack_from("<Q", data, off)[0]
                sz = struct.unpack_from("<Q", data, size)[0]
                if o + sz > n:
                    return "truncated (a weight buffer runs past the end of the file)"
    except (IndexError, struct.error):
        return "truncated or corrupt (a flatbuffer offset points past the end of the file)"
    return None


# --------------------------------------------------------------------------- runtimes

def _import_runtime(name):
    """Return (module-ish, version) for a runtime name, or raise ImportError."""
    if name == "ai_edge_litert":
        from ai_edge_litert import interpreter as mod
        import ai_edge_litert
        return mod.Interpreter, getattr(ai_edge_litert, "__version__", _dist_version("ai-edge-litert"))
    if name == "tflite_runtime":
        from tflite_runtime import interpreter as mod
        import tflite_runtime
        return mod.Interpreter, getattr(tflite_runtime, "__version__", _dist_version("tflite-runtime"))
    if name == "tensorflow":
        import tensorflow as tf
        return tf.lite.Interpreter, tf.__version__
    if name == "onnxruntime":
        import onnxruntime as ort
        return ort, ort.__version__
    raise ImportError(name)


def _dist_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "unknown"


def pick_runtime(requested, model_path):
    if requested and requested != "auto":
        if requested not in RUNTIMES:
            raise BadInput(f"unknown --runtime {requested!r}; valid: auto, {', '.join(RUNTIMES)}")
        try:
            return (requested,) + _import_runtime(requested)
        except ImportError as e:
            raise BadInput(f"--runtime {requested} is not installed here ({e}); {install_hint()}")
    order = ("onnxruntime",) if model_path.endswith(".onnx") else TFLITE_RUNTIMES
    for name in order:
        try:
            return (name,) + _import_runtime(name)
        except ImportError:
            continue
    raise BadInput(f"no runtime for {os.path.basename(model_path)} is installed; {install_hint()}")


def install_hint():
    arch = platform.machine()
    if sys.version_info >= (3, 12) or arch not in ("x86_64", "aarch64", "armv7l"):
        return "install one with `pip install ai-edge-litert` (or `pip install onnxruntime` with --model model.onnx)"
    return ("install one with `pip install ai-edge-litert` (recommended: XNNPACK for int8), "
            "or `pip install tflite-runtime 'numpy<2'`, or `pip install onnxruntime`")


class TFLiteRunner:
    def __init__(self, Interpreter, runtime, path, threads):
        np = _np()
        with open(path, "rb") as f:
            problem = check_tflite_bounds(f.read())
        if problem:
            raise BadInput(f"{path}: {problem}; copy the bundle again")
        if runtime == "tflite_runtime" and int(np.__version__.split(".")[0]) >= 2:
            raise BadInput(f"tflite_runtime needs numpy < 2 but numpy {np.__version__} is installed; "
                           f"run `pip install 'numpy<2'` or use --runtime ai_edge_litert")
        try:
            self.it = Interpreter(model_path=path, num_threads=threads)
            self.it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"{path}: the runtime cannot load it ({str(e).splitlines()[0]}); is the file truncated?")
        except SystemError as e:
            raise BadInput(f"{runtime} failed inside numpy ({e}); tflite_runtime needs `pip install 'numpy<2'`")
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        self.input_dtype = np.dtype(self.inp["dtype"])
        self.in_q = tuple(self.inp["quantization"])
        self.out_q = tuple(self.out["quantization"])
        self.out_dtype = np.dtype(self.out["dtype"])
        try:
            ops = {o["op_name"] for o in self.it._get_ops_details()}
            self.xnnpack = "DELEGATE" in ops
        except Exception:
            self.xnnpack = None

    def run(self, x):
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"])


class OnnxRunner:
    def __init__(self, ort, path, threads):
        np = _np()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BadInput(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]}); is the file truncated?")
        i = self.sess.get_inputs()[0]
        self.name = i.name
        self.input_shape = tuple(int(d) if isinstance(d, int) else 1 for d in i.shape)
        self.input_dtype = np.dtype(np.float32)
        self.in_q = (0.0, 0)
        self.out_q = (0.0, 0)
        self.out_dtype = np.dtype(np.float32)
        self.xnnpack = None

    def run(self, x):
        return self.sess.run(None, {self.name: x})[0]


# --------------------------------------------------------------------------- preprocessing

def prepare(np, x_uint8, meta, runner):
    """Raw uint8 NHWC -> what the model takes: normalised, laid out and quantised as its metadata says."""
    mean = np.asarray(meta["input"]["mean"], np.float32)
    std = np.asarray(meta["input"]["std"], np.float32)
    x = (x_uint8.astype(np.float32) / 255.0 - mean) / std
    if len(runner.input_shape) == 4 and runner.input_shape[1] == x.shape[-1] and runner.input_shape[-1] != x.shape[-1]:
        x = x.transpose(0, 3, 1, 2)  # NCHW model (ONNX)
    if runner.input_dtype != np.float32:
        scale, zp = runner.in_q
        if not scale:
            raise BadInput("the model's int8 input has no quantisation scale; it cannot be fed")
        info = np.iinfo(runner.input_dtype)
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
    return np.ascontiguousarray(x.astype(runner.input_dtype))


# --------------------------------------------------------------------------- device facts

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def device_facts():
    facts = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
             "cores": os.cpu_count()}
    info = _read("/proc/cpuinfo") or ""
    model = None
    for line in info.splitlines():
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "model", "hardware", "cpu model") and v.strip():
            model = v.strip()
            if k == "model":
                break
    facts["cpu_model"] = model or platform.processor() or None
    facts["governor"] = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    f = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    facts["cur_freq_mhz"] = int(f) / 1000 if f and f.isdigit() else None
    t = _read("/sys/class/thermal/thermal_zone0/temp")
    facts["temperature_c"] = int(t) / 1000 if t and t.lstrip("-").isdigit() else None
    return facts


def peak_rss_mb():
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024 if platform.system() != "Darwin" else r / 2**20
    except Exception:
        return None


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark this bundle's model on this device.")
    p.add_argument("--model", help="model file (default: model.tflite, or model.onnx for --runtime onnxruntime)")
    p.add_argument("--runtime", default="auto", help=f"auto (default) or one of: {', '.join(RUNTIMES)}")
    p.add_argument("--threads", type=int, help="inference threads (default: the target profile's)")
    p.add_argument("--warmup-runs", type=int, default=10, help="discarded runs before timing (default 10)")
    p.add_argument("--runs", type=int, default=200, help="timed runs, at least (default 200)")
    p.add_argument("--min-secs", type=float, default=0.0, help="keep timing until this many seconds passed")
    p.add_argument("--mlperf", action="store_true", help="MLPerf single-stream: >= 1024 queries and >= 60 s")
    p.add_argument("--eval-limit", type=int, default=0, help="use only the first N images of eval.npz")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--dump-outputs", metavar="NPY", help="save the raw model outputs on eval.npz (for bit-exact checks)")
    p.add_argument("--emulated", action="store_true", help="running under emulation: timings are meaningless, no verdict")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    np = _np()
    meta = load_json(os.path.join(HERE, "metadata.json"), "metadata.json")
    if a.threads is not None and a.threads < 1:
        raise BadInput(f"--threads must be >= 1, got {a.threads}")
    if a.runs < 1 or a.warmup_runs < 0 or a.min_secs < 0:
        raise BadInput("--runs must be >= 1, --warmup-runs and --min-secs >= 0")
    budget = (meta.get("latency_ms") or {}).get("budget")
    if not isinstance(budget, (int, float)) or budget <= 0:
        raise BadInput("metadata.json has no latency_ms.budget; rebuild the bundle with `make build TARGET=<name>`")
    threads = a.threads or int((meta.get("threads") or 1))
    model = a.model or ("model.onnx" if a.runtime == "onnxruntime" else "model.tflite")
    model_path = model if os.path.isabs(model) else os.path.join(HERE, model) if not os.path.exists(model) else model
    if a.runtime == "onnxruntime" and not model_path.endswith(".onnx"):
        raise BadInput(f"--runtime onnxruntime runs .onnx models, not {os.path.basename(model_path)}")
    if a.runtime in TFLITE_RUNTIMES and not model_path.endswith(".tflite"):
        raise BadInput(f"--runtime {a.runtime} runs .tflite models, not {os.path.basename(model_path)}")
    digest = verify_model(model_path, os.path.join(HERE, "manifest.json"))
    name, rt, version = pick_runtime(a.runtime, model_path)

    t0 = time.perf_counter()
    runner = OnnxRunner(rt, model_path, threads) if name == "onnxruntime" else TFLiteRunner(rt, name, model_path, threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    warnings = []
    if a.emulated:
        warnings.append("running under emulation: latency numbers are meaningless here; correctness is the point")
    if runner.xnnpack is False:
        warnings.append(f"XNNPACK did not take this graph under {name} {version}: int8 runs on slow reference "
                        f"kernels (often ~10x slower). Fix: `pip install ai-edge-litert` and use --runtime ai_edge_litert")

    # accuracy (and the sample for timing)
    eval_path = os.path.join(HERE, "eval.npz")
    acc, n_eval, outputs = None, 0, None
    sample = np.zeros(runner.input_shape, runner.input_dtype)
    if os.path.isfile(eval_path):
        try:
            data = np.load(eval_path)
            xs, ys = data["x"], data["y"]
        except Exception as e:
            raise BadInput(f"{eval_path}: unreadable ({e}); expected arrays x (uint8 NHWC) and y")
        if a.eval_limit:
            xs, ys = xs[: a.eval_limit], ys[: a.eval_limit]
        if xs.dtype != np.uint8 or xs.ndim != 4 or len(xs) != len(ys):
            raise BadInput(f"{eval_path}: x must be uint8 NHWC with one label each, got {xs.dtype} {xs.shape}")
        x = prepare(np, xs, meta, runner)
        outs = [runner.run(x[i : i + 1]) for i in range(len(x))]
        outputs = np.concatenate(outs) if outs else None
        if outputs is not None:
            acc = float((outputs.argmax(1) == ys).mean() * 100)
            n_eval = int(len(ys))
            sample = x[:1]
        if a.dump_outputs and outputs is not None:
            np.save(a.dump_outputs, outputs)
    else:
        warnings.append("eval.npz is missing: latency only, no accuracy")

    t0 = time.perf_counter()
    runner.run(sample)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(a.warmup_runs):
        runner.run(sample)
    runs, min_secs = a.runs, a.min_secs
    if a.mlperf:
        runs, min_secs = max(runs, 1024), max(min_secs, 60.0)
    times, start = [], time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_secs:
        t = time.perf_counter()
        runner.run(sample)
        times.append((time.perf_counter() - t) * 1e3)
    ts = np.asarray(times)
    lat = {"n": int(ts.size), "mean": float(ts.mean()), "std": float(ts.std()), "min": float(ts.min()),
           "p50": float(np.percentile(ts, 50)), "p90": float(np.percentile(ts, 90)),
           "p99": float(np.percentile(ts, 99)), "max": float(ts.max())}
    within = lat["p90"] <= budget
    report = {
        "target": meta.get("target"), "runtime": name, "runtime_version": str(version), "threads": threads,
        "model_file": os.path.basename(model_path), "model_sha256": digest, "model_size_kb": os.path.getsize(model_path) / 1024,
        "xnnpack": runner.xnnpack, "init_ms": init_ms, "first_inference_ms": first_ms, "latency_ms": lat,
        "peak_rss_mb": peak_rss_mb(), "accuracy_top1": acc, "n_eval": n_eval,
        "expected_accuracy": (meta.get("accuracy") or {}).get("onnx_int8" if name == "onnxruntime" else "tflite_int8"),
        "budget_ms": budget, "within_budget": None if a.emulated else within, "mlperf": a.mlperf, "emulated": a.emulated,
        "model": {"macs": meta["model"]["macs"], "layers": meta["model"].get("layers"), "params": meta["model"]["params"]},
        "device": device_facts(), "warnings": warnings,
    }
    print_report(report)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, a.json)
    if a.emulated:
        return 0
    return 0 if within else 1


def print_report(r):
    lat = r["latency_ms"]
    d = r["device"]
    rows = [
        ("target", r["target"]), ("device", f"{d['cpu_model']} ({d['machine']}, {d['cores']} cores)"),
        ("governor / freq / temp", f"{d['governor']} / {d['cur_freq_mhz']} MHz / {d['temperature_c']} °C"),
        ("runtime", f"{r['runtime']} {r['runtime_version']} (XNNPACK: {r['xnnpack']})"),
        ("model", f"{r['model_file']} {r['model_size_kb']:.1f} KiB, sha256 {r['model_sha256'][:12]}… ok"),
        ("threads", r["threads"]), ("init", f"{r['init_ms']:.2f} ms"), ("first inference", f"{r['first_inference_ms']:.3f} ms"),
        ("runs", lat["n"]),
        ("latency mean ± std", f"{lat['mean']:.4f} ± {lat['std']:.4f} ms"),
        ("min / p50 / p90 / p99 / max", " / ".join(f"{lat[k]:.4f}" for k in ("min", "p50", "p90", "p99", "max")) + " ms"),
        ("peak RSS", f"{r['peak_rss_mb']:.1f} MiB" if r["peak_rss_mb"] else "n/a"),
        ("top-1 accuracy", f"{r['accuracy_top1']:.2f}% on {r['n_eval']} images (build measured {r['expected_accuracy']}%)"
         if r["accuracy_top1"] is not None else "n/a (no eval.npz)"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    for msg in r["warnings"]:
        print(f"WARNING: {msg}")
    if r["emulated"]:
        print(f"verdict: none (emulated); budget p90 <= {r['budget_ms']} ms")
    else:
        verdict = "WITHIN" if r["within_budget"] else "OVER"
        print(f"verdict: {verdict} budget — p90 {lat['p90']:.4f} ms vs {r['budget_ms']} ms")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
