"""The conductor: train -> search (prune + shrink) -> finetune -> export (quantize) -> verify ->
robustness -> bundle (with report), for one target profile.

In:  a target name and a `BuildConfig`.
Out: `dist/<target>/` (see DESIGN.md) and, per stage, a cache entry `build/cache/<stage>-<hash>/`
     keyed by a hash of that stage's inputs and config, so a re-run skips finished stages.
Run: `make build TARGET=rpi4` or `edge-sparse build --target rpi4 [--from STAGE] [--until STAGE]`

A cache entry appears under its final name only when its stage finished (it is written to a temp
directory and renamed), so an interrupted build never reuses a half-written entry. Training also
checkpoints every epoch beside its entry and resumes from there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from edge_sparse._supervise import note_stage
from edge_sparse import _io, data as data_mod, models, quantize
from edge_sparse.config import BuildConfig
from edge_sparse.errors import EdgeSparseError, GateError
from edge_sparse.targets import Target, load_target

STAGES = ("train", "search", "finetune", "reference", "export", "verify", "robustness", "bundle")
CACHE_VERSION = "1"


# The modules whose code decides each stage's output: editing one invalidates that stage (and, through
# the chained keys, every later one). The glue in this file is not hashed; after changing it, re-run
# with --from STAGE.
STAGE_CODE = {
    "train": ("data.py", "models.py", "train.py", "pruning.py"),  # pruning.py: which BatchNorms bn_l1 leaves out
    "search": ("pruning.py", "search.py", "allocate.py", "targets.py", "latency/ops.py", "latency/table.py",
               "latency/predict.py", "latency/estimate.py"),
    "finetune": ("train.py", "pruning.py"),
    "reference": ("train.py",),
    "export": ("quantize.py", "export/onnx.py", "export/tflite.py", "export/lint.py", "export/rewrite.py"),
    "verify": ("verify.py",),
    "robustness": ("robustness.py",),
}


# The libraries whose behaviour decides each stage's output: upgrading one invalidates that stage (and, through the
# chained keys, every later one), as editing the stage's code does. Pillow decodes image folders; onnx2tf, TensorFlow's
# converter and LiteRT's kernels (the bias correction reads them) make the .tflite; onnxruntime the int8 ONNX and its
# parity. (The host latency table is keyed by its runtime's version already: `latency.host.cache_path`.)
STAGE_LIBS = {
    "train": ("torch", "numpy", "pillow", "torch-pruning"),
    "search": ("torch-pruning",),
    "export": ("onnx", "onnxruntime", "tensorflow", "onnx2tf", "ai-edge-litert"),
    "verify": ("onnxruntime", "ai-edge-litert"),
}


def _lib_versions(stage: str) -> list:
    """[(distribution, installed version or None)] for the libraries `stage`'s output depends on (`STAGE_LIBS`)."""
    from edge_sparse.versions import package_versions

    return list(package_versions(STAGE_LIBS.get(stage, ())).items())


def _code_fingerprint(stage: str) -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for name in STAGE_CODE[stage]:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Build:
    """State that flows between stages; each stage reads what earlier ones left here."""

    target: Target
    cfg: BuildConfig
    cache: Path
    out_dir: Path
    splits: Optional[data_mod.Splits] = None
    keys: dict = field(default_factory=dict)  # stage -> cache key
    dirs: dict = field(default_factory=dict)  # stage -> cache directory
    results: dict = field(default_factory=dict)  # stage -> JSON result
    times: dict = field(default_factory=dict)  # stage -> wall seconds (this run; cached stages: 0)
    recompute: set = field(default_factory=set)  # stages `--from` asked to run again whatever the cache holds

    @property
    def arch_kwargs(self) -> dict:
        c, h, w = self.splits.input_shape
        return {"in_channels": c, "num_classes": len(self.splits.classes), "input_size": h}

    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.splits.input_shape)


# --------------------------------------------------------------------------- stages

def stage_train(b: Build, d: Path) -> dict:
    from edge_sparse.train import accuracy, fit

    torch.manual_seed(b.cfg.seed)
    model = models.create(b.cfg.model, **b.arch_kwargs)
    notes = []
    if b.cfg.weights:  # a pretrained start: a short sparsity-inducing fine-tune from the given weights (or none)
        from edge_sparse.usermodel import load_weights_noting

        notes = load_weights_noting(model, b.cfg.weights)
        for n in notes:
            _log(f"  {n}")
    ckpt_dir = b.cache / f"train-{b.keys['train']}.ckpt"
    hist = [] if b.cfg.no_train else fit(model, b.splits, b.cfg.train.replace(seed=b.cfg.seed), ckpt_dir=ckpt_dir,
                                         resume=True)
    models.save(model, d / "dense", arch=b.cfg.model, kwargs=b.arch_kwargs)
    dev = b.cfg.train.device
    res = {"history": hist, "weights_notes": notes,
           "val_acc": accuracy(model, b.splits.val, b.splits.mean, b.splits.std, device=dev),
           "test_acc": accuracy(model, b.splits.test, b.splits.mean, b.splits.std, device=dev)}
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return res


def pricer(b: Build):
    """The target's latency pricer for this build's dense model (its table profiled once, then cached)."""
    from edge_sparse.latency.ops import extract_ops

    if getattr(b, "_pricer", None) is None:
        from edge_sparse.latency.predict import resolve

        dense, _ = models.load(b.dirs["train"] / "dense")
        b._pricer = resolve(b.target, dense, b.example(), log=_log)
    w = b.results.get("search", {}).get("latency", {}).get("weights")
    if w and b._pricer.weights != w:  # the search priced the weights (maybe in another process): price as it did
        dense, _ = models.load(b.dirs["train"] / "dense")
        b._pricer.apply_weights(w, extract_ops(dense, b.example()))
    return b._pricer


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_cores(interval: float = 1.0) -> float:
    """How many of the cores this process may run on other processes keep busy: their non-idle time over `interval`
    seconds while this process sleeps (/proc/stat's per-core lines; elsewhere the 1-minute load average). Not the
    load average on Linux: it still counts this build's own training of the minute before (a zoo build saw 1.61 on
    2 cores with nothing else running), and in a container it counts the whole host."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def sample() -> tuple[int, int, int]:  # total, idle + iowait, cores read
        total = idle = n = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *v = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and (mine is None or int(name[3:]) in mine):
                v = [int(x) for x in v]
                total, idle, n = total + sum(v), idle + v[3] + (v[4] if len(v) > 4 else 0), n + 1
        return total, idle, n

    try:
        t0, i0, n = sample()
        time.sleep(interval)
        t1, i1, _ = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    if not n:
        return os.getloadavg()[0]
    return (1 - (i1 - i0) / max(1, t1 - t0)) * n


def _calibrate_on_dense(b: Build, dense: torch.nn.Module, pr, load=busy_cores, time_p50=None) -> None:
    """Time the dense model whole on this host and let `pr` price each op's weights by it
    (`Pricer.calibrate_weights`), unless other jobs leave no core to spare (`busy_cores`): a loaded timing would price
    weights at the load's cost; the table is then used as measured, said in the log."""
    from edge_sparse.latency.device import time_models_on_device
    from edge_sparse.latency.ops import extract_ops

    cores, busy = _cores(), load()
    if busy >= cores - 0.5:
        _log(f"  latency: other jobs keep {busy:.2f} of {cores} cores busy: the dense model is not timed to price its "
             f"weights; the table's per-op costs stand alone (they under-price models whose weights exceed the cache)")
        return
    from edge_sparse.latency.predict import recheck_host_table

    # the table was probed before the training, maybe hours ago: timed against a table of another speed, the weights'
    # price would carry the difference into every prediction (checked here, so a busy machine skips it above)
    dense_ops = extract_ops(dense, b.example())
    recheck_host_table(pr, dense_ops, b.example().shape[1], log=_log)
    if time_p50 is None:  # -> (p50, p90); a test may give a p50 alone
        calib = data_mod.normalize_np(_calibration(b)[:64], b.splits.mean, b.splits.std, "NHWC")
        time_p50 = lambda: time_models_on_device({DENSE_KEY: dense}, b.splits.input_shape, calib, None,  # noqa: E731
                                                 b.target.threads, log=_log, runs=2000, stat="both")[DENSE_KEY]
    measured = time_p50()
    measured, p90 = measured if isinstance(measured, tuple) else (measured, None)
    w = pr.calibrate_weights(dense_ops, measured,
                             f"the dense model timed whole on this host (p50{' and p90' if p90 else ''}, 2000 invokes, "
                             f"{busy:.2f} cores busy with other jobs)", measured_p90_ms=p90)
    _log(f"  latency: the dense model measured p50 {measured:.4f} ms here, the table's ops sum to "
         f"{w['dense_table_p50_ms']:.4f} ms: its {w['dense_weight_mb']:.2f} MB of weights priced at "
         f"{w['ms_per_weight_mb'] * 1000:.1f} us/MB (the dense model's p90 now {pr.dense_p90_ms:.4f} ms"
         + (f"; its timed p90 {p90:.4f} ms anchors the table's tail curve)" if p90 else ")"))


def _taylor_batch(b: Build):
    """--criterion taylor (the default with --no-train: weights not trained for sparsity): the 256 training images
    and labels whose loss gradient ranks the channels; None for the other criteria."""
    if b.cfg.criterion != "taylor":
        return None
    idx = np.arange(min(256, len(b.splits.train)))
    return (data_mod.to_tensor(b.splits.train.images(idx), b.splits.mean, b.splits.std),
            torch.as_tensor(b.splits.train.y[idx], dtype=torch.long))


DENSE_KEY = "dense (timed beside the finalists)"
TIMING_TOLERANCE = 1.5  # the dense model's timing here vs this host's table: the table's own error is ~15 %


def _time_beside_dense(time_once, dense_predicted_ms: float, speedup: float, load=busy_cores) -> dict:
    """`time_once()` (p90s with the dense model's under DENSE_KEY, timed on this host), checked against this host's
    own table: a dense timing more than TIMING_TOLERANCE off its prediction is the machine's load, not the model (a
    loaded zoo build timed lcnet_050's dense model at 5.1 ms against 0.98 ms predicted, and its finalists looked
    6.5x faster than dense), unless other jobs leave a core to spare (`busy_cores` under cores - 0.5): then it is
    the table that is off for this model (repvit_m0_9's dense model, 4.7 M weights, measured 1.42 ms on a quiet host
    against 0.95 ms predicted: its probes run each op with its weights in cache), and the budget, a ratio of two
    timings taken together, is judged on it, said in the log.
    Loaded and off: time again; twice, refuse with one line rather than judge on it."""
    cores = _cores()
    for attempt in (1, 2):
        got = time_once()
        d = got[DENSE_KEY]
        if 1 / TIMING_TOLERANCE <= d / dense_predicted_ms <= TIMING_TOLERANCE:
            return got
        busy = load()
        if busy < cores - 0.5:
            _log(f"  the dense model timed {d:.4f} ms here against {dense_predicted_ms:.4f} ms by this host's table, "
                 f"with a core to spare (other jobs keep {busy:.2f} of {cores} cores busy): the table is off for this "
                 f"model, not the machine; the budget is judged on the two timings' ratio")
            return got
        _log(f"  the dense model timed {d:.4f} ms here against {dense_predicted_ms:.4f} ms by this host's table, with "
             f"other jobs keeping {busy:.2f} of {cores} cores busy: the machine is busy; "
             + ("timing again" if attempt == 1 else "giving up"))
    raise EdgeSparseError(
        f"timing the finalists on this host: the dense model measured {d:.4f} ms p90, twice more than "
        f"{TIMING_TOLERANCE:g}x off the {dense_predicted_ms:.4f} ms this host's table predicts, with other jobs "
        f"keeping {busy:.2f} of {cores} cores busy, so the relative budget ({speedup:g}x) cannot be judged; other jobs "
        f"are loading this machine: re-run when it is quiet (finished stages are cached)")


def _finalist_timer(b: Build, dense: torch.nn.Module, pr):
    """`time_on_device` for the search: the finalists' p90 on the target's device (DEVICE=..., or this host).

    A relative budget ("2x") is judged against the dense model timed in the same run: each finalist's p90
    is returned as measured / measured dense x the table's dense p90, the units the budget is stated in.
    """
    from edge_sparse.latency.device import time_models_on_device

    calib = data_mod.normalize_np(_calibration(b)[:64], b.splits.mean, b.splits.std, "NHWC")
    python = os.environ.get("EDGE_SPARSE_DEVICE_PYTHON", "python3")  # the device's Python
    device, speedup = b.cfg.target_device, b.target.speedup
    where = f"on {device}" if device else "here"

    def timer(models_by_name: dict) -> dict:
        named = {**models_by_name, **({DENSE_KEY: dense} if speedup else {})}
        time_once = lambda: time_models_on_device(named, b.splits.input_shape, calib, device,  # noqa: E731
                                                  b.target.threads, python=python, log=_log,
                                                  runs=200 if device else 2000)
        got = time_once() if not speedup or device else _time_beside_dense(time_once, pr.dense_p90_ms, speedup)
        if not speedup:
            return got
        d = got.pop(DENSE_KEY)
        for n, m in got.items():
            _log(f"  {n}: p90 {m:.4f} ms {where} vs the dense model's {d:.4f} ms = {d / m:.2f}x faster "
                 f"(the budget: {speedup:g}x)")
        return {n: m / d * pr.dense_p90_ms for n, m in got.items()}

    return timer


def stage_search(b: Build, d: Path) -> dict:
    from edge_sparse.search import candidates_table, search, search_allocations

    dense, _ = models.load(b.dirs["train"] / "dense")
    pr = pricer(b)
    allocating = b.cfg.fixed_sparsity is None and b.cfg.search != "global"
    if allocating and not b.cfg.target_device and b.target.latency_table == "host" and pr.weights is None:
        _calibrate_on_dense(b, dense, pr)  # before the budget is stated: it moves the dense model's p90
    _log(f"  latency: {pr.describe()}; budget p90 <= {pr.budget_ms:.4g} ms ({b.target.describe_budget()})"
         + (f", searched under {pr.effective_budget_ms:.4g} ms (a {pr.margin:.0%} margin for the prediction's error)" if pr.margin else ""))
    if not allocating:
        chosen, res, tried = search(dense, b.splits, b.target, b.cfg.sparsities, b.cfg.criterion, log=_log,
                                    fixed=b.cfg.fixed_sparsity, pricer=pr, taylor_batch=_taylor_batch(b),
                                    device=b.cfg.train.device)
    else:
        on_device = None
        if b.cfg.target_device or b.target.latency_table == "host":  # the host target's device is this machine
            on_device = _finalist_timer(b, dense, pr)
        chosen, res, tried = search_allocations(dense, b.splits, b.target, pr, log=_log, time_on_device=on_device,
                                                taylor_batch=_taylor_batch(b), criterion=b.cfg.criterion,
                                                device=b.cfg.train.device)
    rel = ("<=" if chosen.predicted_p90_ms <= pr.effective_budget_ms
           else "> (within the margin; measured under the budget)" if chosen.fits_latency
           else "> (fixed sparsity: reported, not enforced)")
    _log(f"  chosen: {chosen.method} sparsity {chosen.sparsity:.2f} (predicted p90 {chosen.predicted_p90_ms:.4f} ms {rel} "
         f"{pr.effective_budget_ms:.4g} ms, {chosen.predicted_p90_ms / pr.budget_ms:.0%} of the budget, {chosen.predicted_p90_ms / pr.effective_budget_ms:.0%} of what the margin leaves)")
    model = res.model if res else dense
    models.save(model, d / "pruned", arch=b.cfg.model, kwargs=b.arch_kwargs, record=res.record if res else None)
    out = {"chosen": asdict(chosen), "candidates": candidates_table(tried),
           "shrink_max_abs_diff": res.shrink_max_abs_diff if res else 0.0, "latency": pr.to_dict(),
           "latency_layers": pr.predict(model, b.example())["layers"]}
    if res:
        (d / "prune_table.txt").write_text(res.table() + "\n")
        out["layers"] = [asdict(l) for l in res.layers]
        out["dense_layers"] = [asdict(l) for l in res.dense_layers]
        out["unprunable"] = res.record.get("unprunable", [])  # kept whole, with why (pruning.prune)
        for u in out["unprunable"]:
            _log(f"  kept unpruned: {', '.join(u['layers'][:4])}{', ...' if len(u['layers']) > 4 else ''} ({u['why']})")
        out["dropped_blocks"] = res.record.get("dropped", [])  # blocks removed whole (allocate)
        if out["dropped_blocks"]:
            _log(f"  blocks dropped whole ({len(out['dropped_blocks'])}): {', '.join(out['dropped_blocks'])}")
    return out


def stage_finetune(b: Build, d: Path) -> dict:
    from edge_sparse.pruning import count, profile, prune
    from edge_sparse.train import accuracy, fit

    teacher, _ = models.load(b.dirs["train"] / "dense")
    student, spec = models.load(b.dirs["search"] / "pruned")
    cfg = b.cfg.finetune.replace(seed=b.cfg.seed + 1)
    sparsity = b.results["search"]["chosen"]["sparsity"]
    kd = teacher if cfg.kd_alpha > 0 else None
    if b.cfg.no_train:
        cfg = cfg.replace(epochs=0)  # --no-train: the search already re-estimated BN statistics for the new widths
    if sparsity == 0 and b.cfg.reference == "teacher":
        cfg = cfg.replace(epochs=0)  # nothing was pruned, and the dense model has had every epoch it gets
    # otherwise sparsity 0 still fine-tunes: the train stage is a warm-up, and the dense model gets the same epochs
    if sparsity > 0 and b.cfg.prune_steps > 1:  # iterative: prune the dense model again in steps, 1 fine-tune epoch between them
        step_cfg = cfg.replace(epochs=1)
        res = prune(teacher, b.example(), sparsity=sparsity, criterion=b.cfg.criterion, round_to=b.target.channel_multiple,
                    iterative_steps=b.cfg.prune_steps, taylor_batch=_taylor_batch(b),
                    between_steps=lambda m, i: fit(m, b.splits, step_cfg.replace(seed=cfg.seed + 10 + i), teacher=kd,
                                                   distributed=False))
        student, spec = res.model, {**spec, "record": res.record}
    hist = fit(student, b.splits, cfg, teacher=kd, ckpt_dir=b.cache / f"finetune-{b.keys['finetune']}.ckpt", resume=True,
               distributed=False)
    models.save(student, d / "model", arch=spec["arch"], kwargs=spec["kwargs"], record=spec["record"])
    shutil.rmtree(b.cache / f"finetune-{b.keys['finetune']}.ckpt", ignore_errors=True)
    layers = profile(student, b.example())
    params, macs = count(student, b.example())
    lat = pricer(b).predict(student, b.example())
    final = {"sparsity": sparsity, "params": params, "macs": macs, "layers": len(layers),
             "predicted_p90_ms": round(lat["p90"], 5), "predicted_p50_ms": round(lat["p50"], 5),
             "prune_steps": b.cfg.prune_steps}
    return {"history": hist, "val_acc": accuracy(student, b.splits.val, b.splits.mean, b.splits.std, device=cfg.device),
            "final": final}


def stage_reference(b: Build, d: Path) -> dict:
    """The dense model every "dense vs shipped" number compares against (export, verify, robustness, report).

    `reference` (BuildConfig) says which: "teacher" — the train stage's model itself, which trained every dense
    epoch and taught the pruned model (nothing more is trained here); "retrain" — the train stage's model given
    the fine-tune epochs too with the same recipe, unpruned, so both had the same training budget; "warmup" — the
    train stage's model as is (cheap, but when the train stage is a short warm-up the comparison favours the
    shipped model, and the report says so). With --weights it is the given model, evaluated, not retrained.
    """
    from edge_sparse.train import accuracy, fit

    dense, spec = models.load(b.dirs["train"] / "dense")
    cfg = b.cfg.finetune.replace(seed=b.cfg.seed + 1)
    hist, extra, kind = [], 0, b.cfg.reference
    if b.cfg.weights and not b.results["train"].get("weights_notes"):  # your model as you trained it: not retrained
        from edge_sparse.usermodel import load_weights

        dense = load_weights(models.create(spec["arch"], **spec["kwargs"]), b.cfg.weights).eval()
        models.save(dense, d / "dense", arch=spec["arch"], kwargs=spec["kwargs"])
        return {"history": [], "epochs": 0, "same_budget": False, "given": True, "kind": "given",
                "val_acc": accuracy(dense, b.splits.val, b.splits.mean, b.splits.std, device=cfg.device)}
    if kind == "retrain" and cfg.epochs > 0:
        extra = cfg.epochs
        if b.results["search"]["chosen"]["sparsity"] == 0:  # the shipped model is this very run: reuse it
            dense, _ = models.load(b.dirs["finetune"] / "model")
            hist = b.results["finetune"]["history"]
        else:
            kd = models.load(b.dirs["train"] / "dense")[0] if cfg.kd_alpha > 0 else None
            ckpt = b.cache / f"reference-{b.keys['reference']}.ckpt"
            hist = fit(dense, b.splits, cfg, teacher=kd, ckpt_dir=ckpt, resume=True, distributed=False)
            shutil.rmtree(ckpt, ignore_errors=True)
    elif kind == "teacher":
        hist = b.results["train"].get("history", [])
    models.save(dense, d / "dense", arch=spec["arch"], kwargs=spec["kwargs"])
    return {"history": hist, "epochs": b.cfg.train.epochs + extra, "same_budget": extra > 0, "kind": kind,
            "val_acc": accuracy(dense, b.splits.val, b.splits.mean, b.splits.std, device=cfg.device)}


def _calibration(b: Build) -> np.ndarray:
    """uint8 NHWC calibration images: the committed calib_data/ slice, else one drawn from train."""
    c, h, w = b.splits.input_shape
    x = None
    if b.cfg.dataset == "fashion-mnist" or not b.cfg.data_dir:
        x = quantize.load(b.cfg.dataset, hwc=(h, w, c), num_classes=len(b.splits.classes))
        if x is not None:
            # the committed slice was drawn from train for seed 0; another seed's validation slice (or a test
            # image identical to a train image) may contain some of it: those never calibrate
            n = len(x)
            x = quantize.drop_held_out(x, b.splits)
            if len(x) < n:
                _log(f"  calibration: {n - len(x)} of {n} committed calib_data/ images are in this seed's "
                     f"validation or test split; they are left out")
            if len(x) < min(b.cfg.calib_size, quantize.MIN_CALIB):
                x = None
    if x is None:
        x, _ = quantize.make(b.splits, b.cfg.calib_size, b.cfg.seed)
    return x[: b.cfg.calib_size]


def stage_export(b: Build, d: Path) -> dict:
    from edge_sparse.export import lint, onnx as eonnx, tflite as etflite
    from edge_sparse.pruning import profile

    model, _ = models.load(b.dirs["finetune"] / "model")
    dense, _ = models.load(b.dirs["reference"] / "dense")
    calib = _calibration(b)
    mean, std = b.splits.mean, b.splits.std
    nchw = data_mod.normalize_np(calib, mean, std, "NCHW")
    nhwc = data_mod.normalize_np(calib, mean, std, "NHWC")
    times = {}
    t = time.time()
    ops_fp32 = eonnx.export_fp32(model, b.splits.input_shape, d / "model_fp32.onnx")
    times["onnx_fp32"] = time.time() - t
    t = time.time()
    ops_int8 = eonnx.quantize_int8(d / "model_fp32.onnx", nchw, d / "model.onnx")
    times["onnx_int8"] = time.time() - t
    t = time.time()
    etflite.export(d / "model_fp32.onnx", nhwc, d / "model_fp32.tflite", d / "model.tflite")
    times["tflite"] = time.time() - t
    # the dense reference, exported the same way (report and benchmarks compare against it)
    t = time.time()
    dense_from = _dense_export(b, dense, nchw, nhwc, d)
    times["dense_reference"] = time.time() - t
    layers = profile(model, b.example())
    rep = lint.check(d / "model.tflite", layers, int8=True)
    lint.check(d / "model_fp32.tflite", layers, int8=False)
    return {"onnx_ops_fp32": ops_fp32, "onnx_ops_int8": ops_int8, "tflite_lint": rep.to_dict(), "seconds": times,
            "calib_count": int(len(calib)), "calib_sha256": data_mod.sha256_array(calib), "dense_export": dense_from}


DENSE_ARTIFACTS = ("dense_fp32.onnx", "dense_int8.onnx", "dense_fp32.tflite", "dense_int8.tflite")


def _dense_export(b: Build, dense, nchw: np.ndarray, nhwc: np.ndarray, d: Path) -> str:
    """The dense reference's four artifacts, copied into the export entry `d` from a cache entry of their own,
    `dense-export-<key>` (the dense model, calibration images and export code): builds of one model for other
    targets or budgets export it once (the dense export is most of the export stage's time: 523 of 748 s for a 316
    M-MAC MobileNetV2 at 96 px). Returns that entry's name, and whether it was made now or reused."""
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    e = b.cache / f"dense-export-{b.keys['dense_export']}"
    # the dense weights themselves, not only their key: a reference entry recomputed differently (a damaged one
    # rebuilt, a GPU retrain) is exported again. Their hashes are in the reference entry's files.json (`_seal`)
    listing = json.loads((b.dirs["reference"] / "files.json").read_text())
    weights = hashlib.sha256(json.dumps(sorted((k, v) for k, v in listing.items() if k.startswith("dense/")))
                             .encode()).hexdigest()
    made = "export" in b.recompute or not (e / "stage.json").is_file() or _entry_ok(e) is not None \
        or json.loads((e / "stage.json").read_text()).get("dense_sha256") != weights
    if made:
        with _io.atomic_dir(e) as tmp:
            eonnx.export_fp32(dense, b.splits.input_shape, tmp / "dense_fp32.onnx")
            eonnx.quantize_int8(tmp / "dense_fp32.onnx", nchw, tmp / "dense_int8.onnx")
            notes = etflite.export(tmp / "dense_fp32.onnx", nhwc, tmp / "dense_fp32.tflite", tmp / "dense_int8.tflite")
            _io.write_json(tmp / "stage.json", {"notes": notes, "reference": b.keys["reference"], "dense_sha256": weights})
            _seal(tmp)
    for name in DENSE_ARTIFACTS:
        shutil.copyfile(e / name, d / name)
    return f"{e.name} ({'made now' if made else 'reused'})"


def _eval_set(b: Build) -> tuple[np.ndarray, np.ndarray]:
    n = min(b.cfg.eval_size, len(b.splits.test))
    idx = data_mod._stratified_pick(b.splits.test.y, n, np.random.default_rng(b.cfg.seed + 11))
    return b.splits.test.images(idx), b.splits.test.y[idx]


def stage_verify(b: Build, d: Path) -> dict:
    from edge_sparse import verify
    from edge_sparse.train import predict

    model, _ = models.load(b.dirs["finetune"] / "model")
    dense, _ = models.load(b.dirs["reference"] / "dense")
    x, y = _eval_set(b)
    es = data_mod.ImageSet(x, y)
    ref = predict(model, es, b.splits.mean, b.splits.std)
    ref_dense = predict(dense, es, b.splits.mean, b.splits.std)
    e = b.dirs["export"]
    arts = {"model_fp32.onnx": ("float", e / "model_fp32.onnx"), "model.onnx": ("int8", e / "model.onnx"),
            "model_fp32.tflite": ("float", e / "model_fp32.tflite"), "model.tflite": ("int8", e / "model.tflite")}
    par = verify.check_all(arts, ref, x, y, b.splits.mean, b.splits.std, enforce=False)
    dense_par = verify.check_all({"dense_int8.tflite": ("int8", e / "dense_int8.tflite"),
                                  "dense_fp32.tflite": ("float", e / "dense_fp32.tflite")},
                                 ref_dense, x, y, b.splits.mean, b.splits.std, enforce=False)
    layer_err = verify.layer_errors(e / "model_fp32.onnx", e / "model.onnx",
                                    data_mod.normalize_np(_calibration(b)[:32], b.splits.mean, b.splits.std, "NCHW"))
    np.savez_compressed(d / "eval.npz", x=x, y=y)
    full = _full_test(b, model, dense)
    acc = {"torch_fp32_dense": float((ref_dense.argmax(1) == y).mean() * 100),
           "torch_fp32": float((ref.argmax(1) == y).mean() * 100),
           "tflite_int8": par["model.tflite"]["accuracy"], "onnx_int8": par["model.onnx"]["accuracy"],
           "tflite_fp32": par["model_fp32.tflite"]["accuracy"], "onnx_fp32": par["model_fp32.onnx"]["accuracy"],
           "dense_tflite_int8": dense_par["dense_int8.tflite"]["accuracy"], "n_eval": int(len(y)),
           "test": full}
    return {"parity": par, "dense_parity": dense_par, "accuracy": acc, "layer_errors": layer_err}


def _full_test(b: Build, model: torch.nn.Module, dense: torch.nn.Module) -> dict:
    """Top-1 of every shipped artifact and the dense reference on the whole test split, with 95 % intervals.

    `eval.npz` (the bundle's on-device slice) carries ~±0.65 pt of sampling noise at 2,000 images; these
    are the numbers to compare models by. Paired differences use the same images, so their interval is
    narrower than the two accuracies' intervals suggest.
    """
    from edge_sparse import verify
    from edge_sparse.train import predict

    test, y = b.splits.test, b.splits.test.y
    e, mean, std = b.dirs["export"], b.splits.mean, b.splits.std
    parts: dict[str, list] = {}
    chunk = 2000  # streamed (never the whole split in memory); a multiple of predict's batches: the same logits
    chunks = [np.arange(i, min(i + chunk, len(test))) for i in range(0, len(test), chunk)]
    with data_mod.Reader(test) as read:
        for idx, xb in zip(chunks, read(chunks)):
            x = xb.numpy()
            part = data_mod.ImageSet(x, y[idx])
            dev = b.cfg.train.device
            for k, v in (("torch_fp32", predict(model, part, mean, std, device=dev)),
                         ("torch_fp32_dense", predict(dense, part, mean, std, device=dev)),
                         ("tflite_int8", verify.run_tflite(e / "model.tflite", x, mean, std)),
                         ("onnx_int8", verify.run_onnx(e / "model.onnx", x, mean, std)),
                         ("dense_tflite_int8", verify.run_tflite(e / "dense_int8.tflite", x, mean, std))):
                parts.setdefault(k, []).append(v)
    logits = {k: np.concatenate(v) for k, v in parts.items()}
    out = {k: verify.top1(v, y) for k, v in logits.items()}
    out["n"] = int(len(y))
    out["int8_agreement_pct"] = round(float((logits["tflite_int8"].argmax(1) == logits["torch_fp32"].argmax(1)).mean() * 100), 3)
    out["shipped_int8_minus_dense_fp32"] = verify.paired_diff(logits["tflite_int8"], logits["torch_fp32_dense"], y)
    out["shipped_fp32_minus_dense_fp32"] = verify.paired_diff(logits["torch_fp32"], logits["torch_fp32_dense"], y)
    return out


def stage_robustness(b: Build, d: Path) -> dict:
    from edge_sparse import verify
    from edge_sparse.robustness import robust_accuracy

    if b.cfg.robust_n == 0:  # --robust-n 0: skipped (the report and metadata then carry no robustness numbers)
        return {"skipped": "--robust-n 0"}

    eps = list(b.cfg.robust_eps)
    if b.target.robust_eps and b.target.robust_eps not in eps:
        eps.append(b.target.robust_eps)
    model, _ = models.load(b.dirs["finetune"] / "model")
    dense, _ = models.load(b.dirs["reference"] / "dense")
    x, y = _eval_set(b)
    x, y = x[: b.cfg.robust_n], y[: b.cfg.robust_n]
    e = b.dirs["export"]
    mean, std = b.splits.mean, b.splits.std
    shipped = {"tflite_int8": lambda xx: verify.run_tflite(e / "model.tflite", xx, mean, std),
               "onnx_int8": lambda xx: verify.run_onnx(e / "model.onnx", xx, mean, std)}
    sparse = robust_accuracy(model, x, y, eps, mean=mean, std=std, transfer_to=shipped, seed=b.cfg.seed)
    dense_r = robust_accuracy(dense, x, y, eps, mean=mean, std=std, seed=b.cfg.seed)
    return {"n": int(len(y)), "eps": eps, "sparse_fp32": sparse, "dense_fp32": dense_r, "steps": 10}


def stage_bundle(b: Build, d: Optional[Path]) -> dict:
    from edge_sparse import bundle

    return bundle.write(b)


STAGE_FNS: dict[str, Callable[[Build, Path], dict]] = {
    "train": stage_train, "search": stage_search, "finetune": stage_finetune, "reference": stage_reference,
    "export": stage_export, "verify": stage_verify, "robustness": stage_robustness, "bundle": stage_bundle,
}


# --------------------------------------------------------------------------- keys and gates

def data_fingerprint(dataset: str, data_dir) -> str:
    """The dataset's files by content: path, size and mtime of every file under the data directory (or of
    Fashion-MNIST's four files), plus a sha256 of each file's first and last MiB. New contents under the
    same --data-dir give a new key, so the cache never reuses a model trained on other data."""
    if data_dir:
        root = Path(data_dir).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    else:
        try:
            root = data_mod._fashion_dir() if dataset == "fashion-mnist" else None
        except EdgeSparseError:
            root = None
        files = sorted(root.glob("*.gz")) if root and root.is_dir() else []
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root) if root and p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if st.st_size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


def _keys(b: Build) -> dict:
    c, t = b.cfg, b.target
    data_key = {"dataset": c.dataset, "data_dir": str(Path(c.data_dir).resolve()) if c.data_dir else None,
                "files": data_fingerprint(c.dataset, c.data_dir),
                "limit_train": c.limit_train, "limit_eval": c.limit_eval, "image_size": c.image_size, "seed": c.seed,
                **({"skip_bad_images": True} if c.skip_bad_images else {})}
    keys = {}
    from edge_sparse import usermodel

    user = [usermodel.fingerprint(c.model)] if usermodel.is_ref(c.model) else []
    if c.weights:
        user += ["weights", usermodel.weights_fingerprint(c.weights), c.no_train]
    keys["train"] = _hash(["train", CACHE_VERSION, _code_fingerprint("train"), _lib_versions("train"), data_key, c.model,
                           asdict(c.train)] + user)
    keys["search"] = _hash(["search", keys["train"], _code_fingerprint("search"), _lib_versions("search"), c.criterion,
                            sorted(c.sparsities), c.fixed_sparsity, c.search, c.target_device, t.latency_budget_ms, t.latency_budget, t.model_size_budget_kb,
                            t.channel_multiple, asdict(t.latency_model) if t.latency_model else None, _latency_identity(t)])
    keys["finetune"] = _hash(["finetune", keys["search"], _code_fingerprint("finetune"), asdict(c.finetune), c.no_train]
                             + ([c.prune_steps] if c.prune_steps > 1 else [])
                             # at sparsity 0 the reference mode decides the fine-tune (teacher: none); the default's
                             # key stays as it was
                             + ([c.reference] if c.reference != "teacher" else []))
    keys["reference"] = _hash(["reference", keys["train"], _code_fingerprint("reference"),
                               asdict(c.finetune) if c.reference == "retrain" else None, c.reference,
                               c.weights is not None])
    keys["export"] = _hash(["export", keys["finetune"], keys["reference"], _code_fingerprint("export"), _lib_versions("export"),
                            c.calib_size, _calib_fingerprint()])
    # the dense reference's export alone (`_dense_export`): shared by every build of the same dense model
    keys["dense_export"] = _hash(["dense-export", keys["reference"], _code_fingerprint("export"), _lib_versions("export"),
                                  c.calib_size, _calib_fingerprint()])
    keys["verify"] = _hash(["verify", keys["export"], _code_fingerprint("verify"), _lib_versions("verify"), c.eval_size])
    keys["robustness"] = _hash(["robustness", keys["verify"], _code_fingerprint("robustness"), list(c.robust_eps),
                                c.robust_n, t.robust_eps])
    keys["bundle"] = "-"
    return keys


def _latency_identity(t: Target) -> Optional[str]:
    """What the target's latency numbers come from: this host's CPU + runtime + threads, or its table file."""
    if t.latency_table == "host":  # the table's contents: a re-probed table (the machine drifted) re-runs the search
        from edge_sparse.latency.host import cache_path

        p = cache_path(t.threads)
        return p.name + (":" + hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "")
    if t.latency_table:
        return hashlib.sha256((Path(t.path).parent / t.latency_table).read_bytes()).hexdigest()[:16]
    from edge_sparse.latency import estimate

    fit = estimate.fit_path(t.latency_fit) if t.latency_fit else None  # a refit (--write-fit) re-runs the search
    if not (fit and fit.is_file()):
        return None
    # the ops the fit has no class for are priced by the host-measured ratios: re-measured ones re-run the search too
    ratios = estimate.RATIOS_PATH.read_bytes() if estimate.RATIOS_PATH.is_file() else b""
    return hashlib.sha256(fit.read_bytes() + ratios).hexdigest()[:16]


def _calib_fingerprint() -> str:
    m = quantize.calib_dir() / "MANIFEST.json"
    return hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.is_file() else "none"


def _gates(b: Build) -> None:
    """Numeric gates after verify: parity, accuracy floor, size; robustness floor after robustness."""
    from edge_sparse.verify import FLOAT_MIN_AGREEMENT, INT8_MAX_ACC_LOSS, INT8_MIN_AGREEMENT

    v = b.results.get("verify")
    if v and "verify_gated" not in b.results:
        fails = []
        for name, p in v["parity"].items() if b.cfg.enforce_parity else ():
            need = FLOAT_MIN_AGREEMENT if p["kind"] == "float" else INT8_MIN_AGREEMENT
            if p["agreement"] < need:
                fails.append(f"{name} top-1 agreement {p['agreement']:.2f}% < {need}%")
            if p["kind"] == "int8" and p["accuracy_loss"] > INT8_MAX_ACC_LOSS:
                fails.append(f"{name} loses {p['accuracy_loss']:.2f} pt > {INT8_MAX_ACC_LOSS} pt")
        acc = v["accuracy"]["tflite_int8" if b.target.runtime == "tflite" else "onnx_int8"]
        if acc < b.target.accuracy_floor_pct and b.cfg.enforce_accuracy_floor:
            hint = "" if b.cfg.accuracy_floor_pct is not None or b.cfg.dataset == "fashion-mnist" else \
                " (the profile's floor is stated for fashion-mnist; set yours with --accuracy-floor PCT)"
            fails.append(f"shipped int8 accuracy {acc:.2f}% is below {b.target.name}'s floor "
                         f"{b.target.accuracy_floor_pct}% (short by {b.target.accuracy_floor_pct - acc:.2f} pt){hint}")
        final = b.results["finetune"]["final"]
        budget = b.results["search"]["latency"]["effective_budget_ms"]
        chosen = b.results["search"]["chosen"]
        if chosen.get("measured_p90_ms") is not None and chosen.get("fits_latency"):  # timed within the margin: fits
            budget = max(budget, min(chosen["predicted_p90_ms"], b.results["search"]["latency"]["budget_ms"]))
        if final["predicted_p90_ms"] > budget + 1e-9 and b.cfg.fixed_sparsity is None:
            fails.append(f"the fine-tuned model predicts p90 {final['predicted_p90_ms']:.4f} ms > budget "
                         f"{budget:.4g} ms (iterative pruning kept more channels than the search)")
        art = "model.tflite" if b.target.runtime == "tflite" else "model.onnx"
        size_kb = (b.dirs["export"] / art).stat().st_size / 1024
        if size_kb > b.target.model_size_budget_kb and b.cfg.fixed_sparsity is None:
            fails.append(f"{art} is {size_kb:.1f} KiB > size budget {b.target.model_size_budget_kb} KiB")
        if fails:
            raise GateError("build gates failed: " + "; ".join(fails))
        b.results["verify_gated"] = True
    r = b.results.get("robustness")
    if r and "sparse_fp32" in r and b.target.robust_eps and b.target.robust_accuracy_floor_pct:
        key = f"{b.target.robust_eps:g}"
        got = r["sparse_fp32"]["eps"][key]["tflite_int8_pgd_transfer"]
        if got < b.target.robust_accuracy_floor_pct:
            raise GateError(f"robust accuracy {got:.2f}% at eps {key}/255 is below {b.target.name}'s floor "
                            f"{b.target.robust_accuracy_floor_pct}%")


# --------------------------------------------------------------------------- run

def run(target_name: str, cfg: BuildConfig, *, out_dir: str | Path = "dist", cache_dir: str | Path = "build/cache",
        from_stage: Optional[str] = None, until_stage: Optional[str] = None) -> Build:
    """Run the stages in order for one target; return the finished `Build` (bundle at out_dir/<target>)."""
    for name, s in (("--from", from_stage), ("--until", until_stage)):
        if s is not None and s not in STAGES:
            raise EdgeSparseError(f"{name} {s!r} is not a stage; valid: {', '.join(STAGES)}")
    target = load_target(target_name)
    if cfg.accuracy_floor_pct is not None:  # your data, your floor: the profile's is stated for its default dataset
        target = dataclasses.replace(target, accuracy_floor_pct=float(cfg.accuracy_floor_pct))
    b = Build(target, cfg, Path(cache_dir), Path(out_dir))
    first = STAGES.index(from_stage) if from_stage else len(STAGES)
    last = STAGES.index(until_stage) if until_stage else len(STAGES) - 1
    t_all = time.time()
    _log(f"edge_sparse build: target {target.name} ({target.device}), dataset {cfg.dataset}, model {cfg.model}, "
         f"budget p90 <= {target.describe_budget()}")
    t = time.time()
    b.splits = data_mod.load(cfg.dataset, cfg.data_dir, seed=cfg.seed, limit_train=cfg.limit_train,
                             limit_eval=cfg.limit_eval, image_size=cfg.image_size, workers=cfg.workers,
                             skip_bad_images=cfg.skip_bad_images)
    if b.splits.skipped:
        _log(f"  --skip-bad-images: left out {len(b.splits.skipped)} unreadable image(s), first: {b.splits.skipped[0]}")
    b.times["data"] = time.time() - t
    _preflight(b)
    if b.splits.train.x is None:  # folder images: decoded once into the cache, read as uint8 arrays from then on
        t = time.time()
        b.splits, note = data_mod.decode_once_if_room(b.splits, b.cache / "decoded")
        b.times["data"] += time.time() - t
        _log(f"  {note}")
    if target.latency_table == "host":  # probe (or re-probe, if this machine drifted) before keying the search on it;
        from edge_sparse.latency.predict import resolve  # the pricer needs the architecture only, so the search reuses it

        b._pricer = resolve(target, models.create(cfg.model, **b.arch_kwargs).eval(), b.example(), log=_log)
    b.keys = _keys(b)
    from edge_sparse.train import _dist_env

    rank, world = _dist_env()
    lock = _lock_cache(b.cache) if rank == 0 else None
    try:
        return _run_stages(b, rank, world, first, last, t_all)
    finally:
        if lock is not None:
            lock.close()


def _preflight(b: Build) -> None:
    """What can be refused before any stage runs: an output path that is not a directory, and a user's model
    (`--model file.py:factory`) that does not build, does not fit the data, does not take its `--weights`, or has
    an op the exporters and the latency model cannot take — a bad input never costs a training run."""
    for flag, d in (("--out", b.out_dir), ("--cache", b.cache)):
        if d.exists() and not d.is_dir():
            raise EdgeSparseError(f"{flag} {d}: exists and is not a directory")
    from edge_sparse import usermodel

    if not usermodel.is_ref(b.cfg.model):
        return  # registered architectures: checked by the test suite
    from edge_sparse.latency.ops import extract_ops

    model = models.create(b.cfg.model, **b.arch_kwargs)  # the factory, then its input channels and class count
    if b.cfg.weights:
        notes = usermodel.load_weights_noting(model, b.cfg.weights)
        if notes and b.cfg.no_train:
            raise EdgeSparseError(f"--no-train with --weights {b.cfg.weights}: its classifier head does not fit this "
                                  f"model's classes and would ship untrained; drop --no-train to fine-tune it")
    try:
        extract_ops(model.eval(), b.example())
    except EdgeSparseError as e:
        raise EdgeSparseError(f"--model {b.cfg.model}: {e}") from None


def _lock_cache(cache: Path):
    """One build at a time per cache directory (flock; released when the process dies, even by kill -9).
    Holding it, any `.*.tmp` entry is a leftover of a killed build: removed."""
    import fcntl

    try:
        cache.mkdir(parents=True, exist_ok=True)
        f = open(cache / ".lock", "a+")
    except OSError as e:
        raise EdgeSparseError(f"--cache {cache}: cannot use it as the cache directory ({e.strerror or e})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log(f"  waiting for another build that is using the cache {cache} ...")
        fcntl.flock(f, fcntl.LOCK_EX)
    for stale in cache.glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in cache.glob(".*.old"):
        shutil.rmtree(stale, ignore_errors=True)
    return f


def _entry_ok(d: Path) -> Optional[str]:
    """None when the cache entry `d` is whole (stage.json parses, every file matches files.json), else why not."""
    try:
        json.loads((d / "stage.json").read_text())
        if not (d / "files.json").is_file():  # an entry from before files.json: check what can be, then seal it
            for p in d.rglob("*"):
                if p.suffix == ".json":
                    json.loads(p.read_text())
                elif p.suffix == ".safetensors":
                    from safetensors import safe_open

                    with safe_open(str(p), "pt") as f:
                        for k in f.keys():
                            f.get_tensor(k)
            _seal(d)
        listing = json.loads((d / "files.json").read_text())
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except Exception as e:  # noqa: BLE001 - any failure to read an entry means: recompute it
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    for name, digest in listing.items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        if _io.sha256_file(p) != digest:
            return f"{name} does not match its hash"
    return None


def _seal(tmp: Path) -> None:
    """files.json: the sha256 of every file of a cache entry, checked before the entry is reused."""
    listing = {str(p.relative_to(tmp)): _io.sha256_file(p) for p in sorted(tmp.rglob("*"))
               if p.is_file() and p.name not in ("files.json", "stage.json")}
    _io.write_json(tmp / "files.json", listing)


def _run_stages(b: Build, rank: int, world: int, first: int, last: int, t_all: float) -> Build:
    b.recompute = set(STAGES[first:])
    for i, stage in enumerate(STAGES[: last + 1]):
        d = b.cache / f"{stage}-{b.keys[stage]}"
        b.dirs[stage] = d
        cached = (d / "stage.json").is_file() and i < first
        if cached and rank == 0:
            why = _entry_ok(d)
            if why is not None:
                _log(f"  WARNING: cache entry {d} is damaged ({why}); recomputing {stage}")
                shutil.rmtree(d, ignore_errors=True)
                cached = False
        if world > 1 and stage != "train":  # DDP (torchrun): every rank trained; rank 0 alone goes on
            _end_distributed()
            if rank != 0:
                return b
        if world > 1 and rank != 0 and not cached:  # a helper rank: train with the others, keep nothing
            tmp = Path(tempfile.mkdtemp(prefix="edge_sparse_rank"))
            try:
                b.results[stage] = STAGE_FNS[stage](b, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            continue
        if stage == "bundle":  # cheap, and its output is dist/<target>/ itself: always rebuilt
            _log(f"[{i + 1}/{len(STAGES)}] bundle ...")
            note_stage(stage)
            t = time.time()
            b.results[stage] = stage_bundle(b, None)
            b.times[stage] = time.time() - t
            _log(f"[{i + 1}/{len(STAGES)}] bundle: {b.results[stage]['path']} ({b.times[stage]:.1f}s)")
        elif cached:
            b.results[stage] = json.loads((d / "stage.json").read_text())
            b.times[stage] = 0.0
            _log(f"[{i + 1}/{len(STAGES)}] {stage}: cached ({d})")
        else:
            _log(f"[{i + 1}/{len(STAGES)}] {stage} ...")
            note_stage(stage)
            t = time.time()
            with _io.atomic_dir(d) as tmp:
                res = STAGE_FNS[stage](b, tmp)
                res["_seconds"] = time.time() - t
                # the process's peak so far: >= this stage's; the max over stages is the build's peak
                res["_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
                _seal(tmp)
                _io.write_json(tmp / "stage.json", res)
            b.results[stage] = res
            b.times[stage] = time.time() - t
            _log(f"[{i + 1}/{len(STAGES)}] {stage}: done in {b.times[stage]:.1f}s")
        if stage in ("verify", "robustness"):
            _gates(b)
    if world > 1:
        _end_distributed()
    _log(f"edge_sparse build: finished in {time.time() - t_all:.1f}s")
    return b


def _end_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
