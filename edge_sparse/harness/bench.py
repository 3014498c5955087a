#!/usr/bin/env python3
"""edge_sparse on-device harness: latency percentiles, accuracy and the budget verdict for one bundle.

Standalone: Python >= 3.9, numpy, and one runtime (ai_edge_litert, tflite_runtime, tensorflow or
onnxruntime). It imports nothing of edge_sparse and reads everything it needs (preprocessing,
quantisation, budget) from the bundle beside it.

    python3 bench.py                      # model.tflite, threads from the target profile
    python3 bench.py --runtime onnxruntime --json result.json
    python3 bench.py --mlperf             # MLPerf single-stream: >= 1024 queries and >= 60 s, p90
    python3 bench.py --probes DIR --threads 4 --json timings.json
                                          # time a probe suite (probes.json + one .tflite per probe),
                                          # interleaved, for `edge-sparse profile` / device-in-the-loop builds

Before any model reaches this process, a child process loads it and runs it once: a damaged model that
crashes the runtime's loader (a signal, not an exception) ends the child, not the harness.

Exit codes: 0 within budget (or probes timed), 1 over budget, 2 bad input (one line on stderr naming the
file or flag), 3 internal error (a bug in the harness: one line on stderr; please report it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime")
TFLITE_RUNTIMES = RUNTIMES[:3]
PROBES_FORMAT = "edge_sparse.probes/1"
TIMINGS_FORMAT = "edge_sparse.probe_timings/1"
EXIT_WITHIN, EXIT_OVER, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


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
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: {what} is not valid JSON ({e})")
    except OSError as e:
        raise BadInput(f"{path}: {what} cannot be read ({e.strerror or e})")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path):
    manifest = load_json(path, "manifest.json")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                              for e in files.values()):
        raise BadInput(f"{path}: not a bundle manifest (expected files: {{name: {{sha256: ...}}}}); copy the bundle again")
    return files


def verify_file(path, files, manifest_path, what):
    """Refuse a file whose sha256 differs from manifest.json, before anything reads it."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: {what} not found")
    name = os.path.basename(path)
    entry = files.get(name)
    if entry is None or os.path.dirname(os.path.abspath(path)) != os.path.dirname(os.path.abspath(manifest_path)):
        raise BadInput(f"{path}: not listed in {manifest_path}; only the bundle's own files can be verified")
    got = sha256(path)
    if got != entry["sha256"]:
        raise BadInput(f"{path}: sha256 {got[:16]}… does not match manifest.json ({entry['sha256'][:16]}…); "
                       f"the file is corrupt or was replaced — copy the bundle again")
    return got


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def check_metadata(meta, path):
    """The fields bench.py reads, validated up front: one line naming the first bad field."""
    def bad(field, want):
        raise BadInput(f"{path}: field {field} {want}; rebuild the bundle with `make build TARGET=<name>`")

    if not isinstance(meta, dict):
        bad("(top level)", "must be a JSON object")
    inp = meta.get("input")
    if not isinstance(inp, dict):
        bad("input", "is missing")
    for k in ("mean", "std"):
        v = inp.get(k)
        if not isinstance(v, list) or not v or not all(_number(x) for x in v):
            bad(f"input.{k}", "must be a non-empty list of numbers")
    if any(s <= 0 for s in inp["std"]):
        bad("input.std", "must be positive")
    if len(inp["mean"]) != len(inp["std"]):
        bad("input.mean", "must have as many entries as input.std")
    budget = (meta.get("latency_ms") or {}).get("budget") if isinstance(meta.get("latency_ms"), dict) else None
    if not _number(budget) or budget <= 0:
        bad("latency_ms.budget", "must be a positive number of milliseconds")
    threads = meta.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        bad("threads", f"must be an integer >= 1, got {threads!r}")
    model = meta.get("model")
    if not isinstance(model, dict) or not _number(model.get("macs")) or not _number(model.get("params")):
        bad("model", "must give numeric macs and params")
    if meta.get("accuracy") is not None and not isinstance(meta.get("accuracy"), dict):
        bad("accuracy", "must be an object")
    return meta


def check_output_path(path, flag):
    """Before the timing run: an output path must be writable, so a long run is never lost at the end."""
    if path is None:
        return
    d = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise BadInput(f"{flag} {path}: is a directory; give a file name")
    if not os.path.isdir(d):
        raise BadInput(f"{flag} {path}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise BadInput(f"{flag} {path}: directory {d} is not writable")


def write_atomic(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        try:
            with open(path, "rb") as f:
                problem = check_tflite_bounds(f.read())
        except OSError as e:
            raise BadInput(f"{path}: cannot be read ({e.strerror or e})")
        if problem:
            raise BadInput(f"{path}: {problem}; copy the bundle again")
        if runtime == "tflite_runtime" and int(np.__version__.split(".")[0]) >= 2:
            raise BadInput(f"tflite_runtime needs numpy < 2 but numpy {np.__version__} is installed; "
                           f"run `pip install 'numpy<2'` or use --runtime ai_edge_litert")
        try:
            with _runtime_info_muted():
                self.it = Interpreter(model_path=path, num_threads=threads)
                self.it.allocate_tensors()
            self.inputs = self.it.get_input_details()
            self.out = self.it.get_output_details()[0]
        except (ValueError, RuntimeError, IndexError) as e:
            raise BadInput(f"{path}: the runtime cannot load it ({_first_line(e)}); is the file truncated?")
        except SystemError as e:
            raise BadInput(f"{runtime} failed inside numpy ({e}); tflite_runtime needs `pip install 'numpy<2'`")
        if not self.inputs:
            raise BadInput(f"{path}: the model has no input")
        self.inp = self.inputs[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        self.input_dtype = np.dtype(self.inp["dtype"])
        self.in_q = tuple(self.inp["quantization"])
        self.out_q = tuple(self.out["quantization"])
        self.out_dtype = np.dtype(self.out["dtype"])
        self.output_shape = tuple(int(d) for d in self.out["shape"])
        try:
            ops = {o["op_name"] for o in self.it._get_ops_details()}
            self.xnnpack = "DELEGATE" in ops
        except Exception:
            self.xnnpack = None

    def random_inputs(self, seed=0):
        """One random tensor per model input (probes of ADD take two), in each input's own dtype."""
        np = _np()
        rng = np.random.default_rng(seed)
        xs = []
        for d in self.inputs:
            dt = np.dtype(d["dtype"])
            shape = tuple(int(s) for s in d["shape"])
            if dt.kind in "iu":
                info = np.iinfo(dt)
                xs.append(rng.integers(info.min, int(info.max) + 1, size=shape).astype(dt))
            else:
                xs.append(rng.standard_normal(shape).astype(dt))
        return xs

    def set_inputs(self, xs):
        for d, x in zip(self.inputs, xs):
            self.it.set_tensor(d["index"], x)

    def invoke(self):
        self.it.invoke()

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
            i = self.sess.get_inputs()[0]
            o = self.sess.get_outputs()[0]
        except Exception as e:
            raise BadInput(f"{path}: onnxruntime cannot load it ({_first_line(e)}); is the file truncated?")
        self.name = i.name
        self.input_shape = tuple(int(d) if isinstance(d, int) else 1 for d in i.shape)
        self.output_shape = tuple(int(d) if isinstance(d, int) else 1 for d in o.shape)
        self.input_dtype = np.dtype(np.float32)
        self.in_q = (0.0, 0)
        self.out_q = (0.0, 0)
        self.out_dtype = np.dtype(np.float32)
        self.xnnpack = None

    def random_inputs(self, seed=0):
        np = _np()
        return [np.random.default_rng(seed).standard_normal(self.input_shape).astype(np.float32)]

    def set_inputs(self, xs):
        self._x = xs[0]

    def invoke(self):
        self.sess.run(None, {self.name: self._x})

    def run(self, x):
        return self.sess.run(None, {self.name: x})[0]


class _runtime_info_muted:
    """The TFLite runtime prints `INFO: Created TensorFlow Lite XNNPACK delegate` on fd 2; keep stderr for
    the harness's own one-line errors. Other lines the runtime writes there are passed through."""

    def __enter__(self):
        import tempfile

        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            self.tmp = tempfile.TemporaryFile()
            os.dup2(self.tmp.fileno(), 2)
        except (OSError, ValueError):
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            return False
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.tmp.seek(0)
        rest = [ln for ln in self.tmp.read().decode(errors="replace").splitlines() if ln and not ln.startswith("INFO:")]
        self.tmp.close()
        if rest:
            print("\n".join(rest), file=sys.stderr)
        return False


def _first_line(e):
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def open_runner(name, rt, path, threads):
    return OnnxRunner(rt, path, threads) if name == "onnxruntime" else TFLiteRunner(rt, name, path, threads)


def safe_run(runner, x, path):
    try:
        return runner.run(x)
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"{path}: the runtime failed running it ({_first_line(e)})")


# --------------------------------------------------------------------------- crash isolation

def load_check(name, paths, threads, timeout):
    """Load and invoke each model once in a child process; {path: problem} for the ones that fail.

    A damaged flatbuffer can make a runtime's loader die by a signal (SIGSEGV, SIGABRT) instead of
    raising; in a child that is a clear error, not a dead harness. A crash is blamed on the model the
    child was loading, and the child is restarted on the rest (at most once per model).
    """
    import shlex

    problems, todo = {}, list(paths)
    launcher = shlex.split(os.environ.get("BENCH_CHILD_LAUNCHER", ""))  # e.g. qemu-aarch64 -L <root> (verify-arm)
    while todo:
        cmd = [*launcher, sys.executable, os.path.abspath(__file__), "--_load-check", name, str(threads), *todo]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except OSError as e:
            raise BadInput(f"cannot start the load-check child ({e.strerror or e}): {' '.join(cmd[:2])}; "
                           f"under qemu-user set BENCH_CHILD_LAUNCHER to the emulator command")
        except subprocess.TimeoutExpired:
            raise BadInput(f"{todo[0]}: loading it with {name} did not finish in {timeout:.0f} s; "
                           f"the file is damaged or the device is overloaded")
        started, done = None, set()
        for line in r.stdout.splitlines():
            tag, _, rest = line.partition(" ")
            idx, _, msg = rest.partition(" ")
            if not idx.isdigit() or int(idx) >= len(todo):
                continue
            p = todo[int(idx)]
            if tag == "start":
                started = p
            elif tag == "ok":
                done.add(p)
            elif tag == "error":
                problems[p] = msg
                done.add(p)
        if r.returncode == 0:
            missing = [p for p in todo if p not in done]
            for p in missing:
                problems[p] = "the load check reported nothing for it"
            break
        if started is None or started in done:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise BadInput(f"loading models with {name} failed before any model was read "
                           f"(exit {r.returncode}: {last}); reinstall the runtime")
        problems[started] = f"the runtime crashed loading or running it ({_signal_name(r.returncode)})"
        todo = todo[todo.index(started) + 1:]
    return problems


def _signal_name(rc):
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def _load_check_child(name, threads, paths):
    """Child side of load_check: one line per model on stdout, flushed before the risky call."""
    _, rt, _ = pick_runtime(name, paths[0])
    for i, p in enumerate(paths):
        print(f"start {i}", flush=True)
        try:
            runner = open_runner(name, rt, p, threads)
            runner.set_inputs(runner.random_inputs())
            runner.invoke()
        except BadInput as e:
            print(f"error {i} {str(e).replace(chr(10), ' ')}", flush=True)
            continue
        except Exception as e:
            print(f"error {i} the runtime cannot run it ({_first_line(e)})", flush=True)
            continue
        print(f"ok {i}", flush=True)
    return 0


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


def load_eval(np, path, runner, meta, limit):
    """eval.npz -> (x uint8 NHWC, y int labels), checked against the model before anything runs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise BadInput(f"{path}: expected arrays x (uint8 NHWC) and y (labels), found {sorted(data.files)}")
            xs, ys = data["x"], data["y"]
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"{path}: unreadable ({_first_line(e)}); copy the bundle again")
    if limit:
        xs, ys = xs[:limit], ys[:limit]
    shape = runner.input_shape
    hwc = (shape[1], shape[2], shape[3]) if len(shape) == 4 and shape[-1] in (1, 3) else \
        (shape[2], shape[3], shape[1]) if len(shape) == 4 else None
    if xs.dtype != np.uint8 or xs.ndim != 4 or (hwc and tuple(xs.shape[1:]) != hwc):
        raise BadInput(f"{path}: x must be uint8 images of shape (N, {', '.join(map(str, hwc or ('H', 'W', 'C')))}), "
                       f"got {xs.dtype} {tuple(xs.shape)}")
    if len(meta["input"]["mean"]) not in (1, xs.shape[-1]):
        raise BadInput(f"{path}: images have {xs.shape[-1]} channels but metadata.json input.mean has "
                       f"{len(meta['input']['mean'])} entries")
    if ys.ndim != 1 or ys.dtype.kind not in "iu" or len(ys) != len(xs):
        raise BadInput(f"{path}: y must be one integer label per image (shape ({len(xs)},)), got {ys.dtype} {tuple(ys.shape)}")
    classes = int(runner.output_shape[-1]) if runner.output_shape else 0
    if len(ys) and (int(ys.min()) < 0 or (classes and int(ys.max()) >= classes)):
        raise BadInput(f"{path}: labels must lie in [0, {classes}) for this model's {classes} outputs, "
                       f"got {int(ys.min())}..{int(ys.max())}")
    return xs, ys


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


def looks_emulated(facts):
    """qemu-user shows the host's (or a faked) cpuinfo; `make verify-arm` says --emulated explicitly."""
    text = f"{facts.get('cpu_model') or ''}".lower()
    return "qemu" in text or "emulated" in text


def stats(np, times):
    ts = np.asarray(times)
    return {"n": int(ts.size), "mean": float(ts.mean()), "std": float(ts.std()), "min": float(ts.min()),
            "p50": float(np.percentile(ts, 50)), "p90": float(np.percentile(ts, 90)),
            "p99": float(np.percentile(ts, 99)), "max": float(ts.max())}


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark this bundle's model on this device.")
    p.add_argument("--model", help="model file (default: model.tflite, or model.onnx for --runtime onnxruntime)")
    p.add_argument("--runtime", default="auto", help=f"auto (default) or one of: {', '.join(RUNTIMES)}")
    p.add_argument("--threads", type=int, help="inference threads (default: the target profile's; 1 with --probes)")
    p.add_argument("--warmup-runs", type=int, default=10, help="discarded runs before timing (default 10)")
    p.add_argument("--runs", type=int, help="timed runs, at least (default 200; per probe with --probes: 100)")
    p.add_argument("--min-secs", type=float, default=0.0, help="keep timing until this many seconds passed")
    p.add_argument("--mlperf", action="store_true", help="MLPerf single-stream: >= 1024 queries and >= 60 s")
    p.add_argument("--eval-limit", type=int, default=0, help="use only the first N images of eval.npz")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--dump-outputs", metavar="NPY", help="save the raw model outputs on eval.npz (for bit-exact checks)")
    p.add_argument("--emulated", action="store_true", help="running under emulation: timings are meaningless, no verdict")
    p.add_argument("--probes", metavar="DIR", help="time the probe suite in DIR (probes.json) instead of the bundle")
    p.add_argument("--rounds", type=int, default=5, help="with --probes: interleaved rounds over the suite (default 5)")
    p.add_argument("--load-timeout", type=float, default=300.0, help="seconds the load check of a model may take")
    p.add_argument("--_load-check", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_flags(a):
    if a.threads is not None and a.threads < 1:
        raise BadInput(f"--threads must be >= 1, got {a.threads}")
    if a.runs is not None and a.runs < 1:
        raise BadInput(f"--runs must be >= 1, got {a.runs}")
    if a.warmup_runs < 0 or a.min_secs < 0 or a.eval_limit < 0:
        raise BadInput("--warmup-runs, --min-secs and --eval-limit must be >= 0")
    if a.rounds < 1:
        raise BadInput(f"--rounds must be >= 1, got {a.rounds}")
    if not a.load_timeout > 0:
        raise BadInput(f"--load-timeout must be > 0, got {a.load_timeout}")
    check_output_path(a.json, "--json")
    check_output_path(a.dump_outputs, "--dump-outputs")


def main(argv=None):
    a = parse_args(argv)
    if a._load_check:
        name, threads, *paths = a._load_check
        return _load_check_child(name, int(threads), paths)
    check_flags(a)
    np = _np()
    return run_probes(np, a) if a.probes else run_bundle(np, a)


def run_bundle(np, a):
    meta_path = os.path.join(HERE, "metadata.json")
    manifest_path = os.path.join(HERE, "manifest.json")
    files = load_manifest(manifest_path)
    verify_file(meta_path, files, manifest_path, "metadata.json")
    meta = check_metadata(load_json(meta_path, "metadata.json"), meta_path)
    budget = meta["latency_ms"]["budget"]
    threads = a.threads or meta.get("threads", 1)
    model = a.model or ("model.onnx" if a.runtime == "onnxruntime" else "model.tflite")
    model_path = model if os.path.isabs(model) or os.path.exists(model) else os.path.join(HERE, model)
    if a.runtime == "onnxruntime" and not model_path.endswith(".onnx"):
        raise BadInput(f"--runtime onnxruntime runs .onnx models, not {os.path.basename(model_path)}")
    if a.runtime in TFLITE_RUNTIMES and not model_path.endswith(".tflite"):
        raise BadInput(f"--runtime {a.runtime} runs .tflite models, not {os.path.basename(model_path)}")
    if not model_path.endswith((".tflite", ".onnx")):
        raise BadInput(f"--model {model}: bench.py runs .tflite or .onnx models")
    digest = verify_file(model_path, files, manifest_path, "model file")
    eval_path = os.path.join(HERE, "eval.npz")
    has_eval = os.path.isfile(eval_path)
    if has_eval:
        verify_file(eval_path, files, manifest_path, "eval.npz")
    name, rt, version = pick_runtime(a.runtime, model_path)
    problem = load_check(name, [model_path], threads, a.load_timeout).get(model_path)
    if problem:
        raise BadInput(problem if problem.startswith(model_path) else f"{model_path}: {problem}; copy the bundle again")

    t0 = time.perf_counter()
    runner = open_runner(name, rt, model_path, threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    facts = device_facts()
    emulated = a.emulated or looks_emulated(facts)
    warnings = []
    if emulated:
        warnings.append("running under emulation: latency numbers are meaningless here; correctness is the point")
    if runner.xnnpack is False:
        warnings.append(f"XNNPACK did not take this graph under {name} {version}: int8 runs on slow reference "
                        f"kernels (often ~10x slower). Fix: `pip install ai-edge-litert` and use --runtime ai_edge_litert")

    # accuracy (and the sample for timing)
    acc, n_eval, outputs = None, 0, None
    sample = runner.random_inputs()[0]
    if has_eval:
        xs, ys = load_eval(np, eval_path, runner, meta, a.eval_limit)
        x = prepare(np, xs, meta, runner)
        outs = [safe_run(runner, x[i: i + 1], model_path) for i in range(len(x))]
        outputs = np.concatenate(outs) if outs else None
        if outputs is not None:
            acc = float((outputs.reshape(len(ys), -1).argmax(1) == ys).mean() * 100)
            n_eval = int(len(ys))
            sample = x[:1]
    else:
        warnings.append("eval.npz is missing: latency only, no accuracy")

    t0 = time.perf_counter()
    safe_run(runner, sample, model_path)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(a.warmup_runs):
        runner.run(sample)
    runs, min_secs = a.runs or 200, a.min_secs
    if a.mlperf:
        runs, min_secs = max(runs, 1024), max(min_secs, 60.0)
    times, start = [], time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_secs:
        t = time.perf_counter()
        runner.run(sample)
        times.append((time.perf_counter() - t) * 1e3)
    lat = stats(np, times)
    within = lat["p90"] <= budget
    accuracy = meta.get("accuracy") or {}
    report = {
        "target": meta.get("target"), "runtime": name, "runtime_version": str(version), "threads": threads,
        "model_file": os.path.basename(model_path), "model_sha256": digest, "model_size_kb": os.path.getsize(model_path) / 1024,
        "xnnpack": runner.xnnpack, "init_ms": init_ms, "first_inference_ms": first_ms, "latency_ms": lat,
        "peak_rss_mb": peak_rss_mb(), "accuracy_top1": acc, "n_eval": n_eval,
        "expected_accuracy": accuracy.get("onnx_int8" if name == "onnxruntime" else "tflite_int8"),
        "budget_ms": budget, "within_budget": None if emulated else within, "mlperf": a.mlperf, "emulated": emulated,
        "model": {"macs": meta["model"]["macs"], "layers": meta["model"].get("layers"), "params": meta["model"]["params"]},
        "device": facts, "warnings": warnings,
    }
    print_report(report)
    if a.dump_outputs and outputs is not None:
        write_atomic(a.dump_outputs, lambda f: np.save(f, outputs))
    if a.json:
        write_atomic(a.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    if emulated:
        return EXIT_WITHIN
    return EXIT_WITHIN if within else EXIT_OVER


def load_suite(directory):
    path = os.path.join(directory, "probes.json")
    if not os.path.isdir(directory):
        raise BadInput(f"--probes {directory}: not a directory")
    suite = load_json(path, "probes.json")
    if not isinstance(suite, dict) or suite.get("format") != PROBES_FORMAT or not isinstance(suite.get("probes"), list):
        raise BadInput(f"{path}: not a probe suite (format must be {PROBES_FORMAT!r} with a list of probes)")
    seen = set()
    for i, p in enumerate(suite["probes"]):
        if not (isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("name", "file", "sha256"))):
            raise BadInput(f"{path}: probe #{i} needs string fields name, file and sha256")
        if p["name"] in seen:
            raise BadInput(f"{path}: probe name {p['name']!r} appears twice")
        seen.add(p["name"])
        f = os.path.join(directory, p["file"])
        if os.path.dirname(os.path.abspath(f)) != os.path.abspath(directory) or not f.endswith(".tflite"):
            raise BadInput(f"{path}: probe {p['name']!r} file {p['file']!r} must be a .tflite inside {directory}")
        if not os.path.isfile(f):
            raise BadInput(f"{f}: probe {p['name']!r} is missing; copy the suite again")
        if sha256(f) != p["sha256"]:
            raise BadInput(f"{f}: sha256 does not match probes.json; the suite was damaged in transit, copy it again")
    if not suite["probes"]:
        raise BadInput(f"{path}: the suite has no probes")
    return suite


def run_probes(np, a):
    """Time every probe of a suite, interleaved: round r runs each probe runs/rounds times, in a fresh order."""
    import datetime
    import random

    suite = load_suite(a.probes)
    paths = {p["name"]: os.path.join(a.probes, p["file"]) for p in suite["probes"]}
    name, rt, version = pick_runtime(a.runtime, next(iter(paths.values())))
    if name == "onnxruntime":
        raise BadInput("--probes times .tflite probes; use a TFLite runtime (ai_edge_litert, tflite_runtime, tensorflow)")
    threads = a.threads or 1
    problems = load_check(name, list(paths.values()), threads, a.load_timeout)
    failed = {n: problems[p] for n, p in paths.items() if p in problems}
    runners, inputs = {}, {}
    for n, p in paths.items():
        if n in failed:
            continue
        try:
            runners[n] = open_runner(name, rt, p, threads)
            inputs[n] = runners[n].random_inputs()
        except BadInput as e:
            failed[n] = str(e)
    if not runners:
        raise BadInput(f"--probes {a.probes}: no probe could be loaded (first: {next(iter(failed.items()))})")
    runs = a.runs or 100
    per_round = max(1, -(-runs // a.rounds))
    times = {n: [] for n in runners}
    t_start = time.perf_counter()
    for n, r in runners.items():
        r.set_inputs(inputs[n])
        for _ in range(a.warmup_runs):
            r.invoke()
    order = list(runners)
    for rnd in range(a.rounds):
        random.Random(rnd).shuffle(order)
        for n in order:
            r = runners[n]
            r.set_inputs(inputs[n])
            r.invoke()  # the cache now holds this probe, as it would inside a model
            ts = times[n]
            for _ in range(per_round):
                t = time.perf_counter()
                r.invoke()
                ts.append((time.perf_counter() - t) * 1e3)
    facts = device_facts()
    out = {"format": TIMINGS_FORMAT, "runtime": name, "runtime_version": str(version), "threads": threads,
           "emulated": bool(a.emulated or looks_emulated(facts)), "device": facts,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "runs": per_round * a.rounds, "rounds": a.rounds, "warmup_runs": a.warmup_runs,
           "seconds": time.perf_counter() - t_start,
           "timings": {n: stats(np, ts) for n, ts in times.items()}, "failed": failed}
    dest = a.json or os.path.join(a.probes, "timings.json")
    check_output_path(dest, "--json")
    write_atomic(dest, lambda f: f.write(json.dumps(out, indent=2).encode()))
    print(f"timed {len(times)} probes ({len(failed)} failed) with {name} {version}, {threads} thread(s), "
          f"{per_round * a.rounds} runs each in {a.rounds} rounds, {out['seconds']:.1f} s -> {dest}")
    for n, why in failed.items():
        print(f"WARNING: probe {n}: {why}")
    return EXIT_WITHIN


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


def _entry():
    try:
        code = main()
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:  # noqa: BLE001 - the harness must end with a code and one line, never a traceback
        if isinstance(e, SystemExit):
            raise
        where = ""
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        print(f"internal error: {type(e).__name__}: {_first_line(e)}{where} (a bug in bench.py; please report it)",
              file=sys.stderr)
        code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    _entry()
