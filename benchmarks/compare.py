"""`make compare [QUICK=1]` / `python -m benchmarks.compare`: the shipped model against what a user would do
instead, at equal latency.

For each budget and seed, four models, every one through the build's own int8 export (ONNX -> onnx2tf ->
full-int8 .tflite with the same calibration images), top-1 of the int8 .tflite on the whole test split with
a 95 % interval, and all of a budget's models timed side by side in one interleaved run on this host (1 thread):

- `shipped` — the default build (`pipeline.run` with the default `BuildConfig`, unchanged flags);
- `width`   — the same architecture with every coupled group's width scaled by one factor alpha (rounded to the
              target's channel multiple; the largest alpha, in steps of 0.01, that the same latency model fits
              under the same budget), trained from scratch for the build's total epochs (dense + fine-tune) with
              the build's dense recipe, no sparsity term, no distillation;
- `width-time` — the width peer given the build's wall-clock instead of its epoch count: the time the build spends
              on its dense epochs, converted to epochs of the narrow net by their training-step times measured side
              by side here (`train_step_ratio`), plus the fine-tune's epochs;
- `tp`      — Torch-Pruning's documented recipe: a dense model trained without the sparsity term for the
              build's dense epochs, `MetaPruner` + `GroupMagnitudeImportance(p=2)`, global pruning, the same
              `round_to`, the pruning ratio (a 0.02 grid up to 0.90) whose model fits the same budget closest from
              below, then fine-tuned for the build's fine-tune epochs (labels only, as TP's recipe and the shipped
              model's fine-tune since 2026-12-02 do, at the build's fine-tune learning rate);
- `global`  — the default build with `--search global`: one importance threshold over all channels per candidate
              sparsity (0.1 ... 0.8), the largest that fits — the search before the per-group allocation; the
              same training, fine-tune and export, so `shipped − global` is what the allocation itself gains;
- `dense`   — the build's dense reference, int8: the anchor on the accuracy axis.

Budgets: `rpi4` (its profile: the fitted estimate less its margin), `host:1.3x`, `host:1.6x` (relative to the dense
int8 model measured on this host by the host latency table; the host build also times its finalists here and ships
only one that measured within the budget — on the 2-core EPYC host, ResNet-8's narrowest widths reach ~1.9x at p90,
so 2x and 4x cannot be met there); any `<target>:<k>x` is that target with the relative
budget "<k>x" in place of its own (`rpi4:3x`: 3x faster than the dense model by the rpi4 estimate). `--model`
compares another registered architecture (the default build with `--model`; the profiles' size budgets, stated for
ResNet-8, are raised to 4 MiB for it). Each finished (budget, seed, method) point is
written to benchmarks/compare.json at once and never re-run (resumable); trainings checkpoint.
QUICK=1: one budget (rpi4), one seed, the QUICK build's slices and epochs (minutes, not a claim): its points, table
and plot go to benchmarks/out/compare-quick.{json,md,png}, never into compare.json or BENCHMARKS.md.
`--dataset cifar10 --data-dir DIR` (any dataset the build reads; the directory is read once before any build) runs
the same comparison on the user's data, its points keyed by the dataset and its files' hash, kept with their table
and plot in benchmarks/out/compare-<dataset>.{json,md,png}, never in compare.json or BENCHMARKS.md; `--device cuda`
trains the builds and the peers on a GPU (keyed apart: another model; the int8 models are still timed on the CPU).
On Fashion-MNIST every method lands within ~0.5 pt of the unpruned network, too little headroom to tell recipes
apart; CIFAR-10/100 (not installable on the machine this table was made on) has more.

    python -m benchmarks.compare --budgets rpi4,host:1.3x,host:1.6x --seeds 0,1,2
    python -m benchmarks.compare --model resnet20 --budgets rpi4:3x --seeds 0
    python -m benchmarks.compare --quick
    python -m benchmarks.compare --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --device cuda --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "compare"
METHODS = ("shipped", "global", "width", "width-time", "tp", "dense")
DEFAULT_MODEL = "resnet8"  # BuildConfig's
CACHE = ROOT / "build" / "cache"  # the builds' stage cache, shared with `make build`


@dataclasses.dataclass(frozen=True)
class Data:
    """What a comparison trains and tests on, and where it trains: the build's dataset (its directory for a user's
    copy, known by `fingerprint`, the build cache's hash of its files) and the torch device. The default is the
    build's: Fashion-MNIST on the CPU."""
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    device: str = "cpu"
    fingerprint: Optional[str] = None

    @property
    def key(self) -> str:
        """The points' key suffix: "" for the default (the keys before --dataset); else the dataset with its files'
        hash (two copies, or a copy changed, never share a point) and a device other than the CPU (a model trained
        on a GPU is another model)."""
        k = "" if self.dataset == Data.dataset and not self.fingerprint else \
            f"/{self.dataset}" + (f"-{self.fingerprint}" if self.fingerprint else "")
        return k + ("" if self.device == "cpu" else f"/{self.device.replace(':', '')}")

    def row(self) -> dict:
        return {"dataset": self.dataset, "device": self.device,
                **({"data_fingerprint": self.fingerprint} if self.fingerprint else {})}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _targets_dir(budgets: list[str], model: str = DEFAULT_MODEL, d: Path = ROOT / "build" / "compare-targets",
                 dataset: str = Data.dataset) -> Path:
    """A targets directory with one profile per budget: a target as committed; `<target>-<k>x` = that target with
    the relative budget "<k>x" (k times faster than the dense model on it) in place of its own. For a model or a
    dataset other than the default, every profile's size budget is raised to 4 MiB: the profiles state theirs for
    the default ResNet-8 on Fashion-MNIST (a 1000-class classifier alone is 64 KiB of int8), and this comparison is
    at equal latency."""
    import re

    d.mkdir(parents=True, exist_ok=True)
    src = ROOT / "targets"
    for f in d.glob("*.toml"):
        f.unlink()
    for f in src.glob("*"):
        if f.is_file():
            text = f.read_text()
            if (model != DEFAULT_MODEL or dataset != Data.dataset) and f.suffix == ".toml":
                text = re.sub(r"(?m)^model_size_budget_kb = [0-9.]+", "model_size_budget_kb = 4096", text)
            (d / f.name).write_text(text)
    for b in budgets:
        if ":" in b:
            t, k = b.split(":", 1)
            text = (d / f"{t}.toml").read_text()
            text = re.sub(rf'(?m)^name = "{t}"', f'name = "{t}-{k}"', text)
            text = re.sub(r"(?m)^latency_budget(_ms)? = .*$", f'latency_budget = "{k}"  # set by make compare', text)
            (d / f"{t}-{k}.toml").write_text(text)
    return d


def _parse_data(dataset: str, data_dir: Optional[str], device: str) -> Data:
    """--dataset / --data-dir / --device checked before any build starts: a bad one (a directory of another layout
    included: the data are read once here) is an error line, never a row."""
    import torch

    from edge_sparse import data as data_mod, pipeline
    from edge_sparse.errors import EdgeSparseError

    if dataset not in data_mod.DATASETS:
        raise EdgeSparseError(f"--dataset {dataset!r}: not a dataset the build reads; valid: {', '.join(data_mod.DATASETS)}")
    if dataset != Data.dataset and not data_dir:
        raise EdgeSparseError(f"--dataset {dataset} needs --data-dir (the directory of your copy)")
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise EdgeSparseError(f"--data-dir {data_dir}: no such directory")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EdgeSparseError(f"--device {device!r}: expected cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise EdgeSparseError(f"--device {device!r}: expected cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgeSparseError(f"--device {device!r}: torch sees no CUDA device here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EdgeSparseError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if data_dir:
        data_dir = str(Path(data_dir).expanduser().resolve())
        data_mod.load(dataset, data_dir, seed=0, limit_train=100, limit_eval=100)  # its layout, before any build
    return Data(dataset, data_dir, device, pipeline.data_fingerprint(dataset, data_dir)[:8] if data_dir else None)


def _target_name(budget: str) -> str:
    return budget.replace(":", "-")


def _parse_budget(b: str) -> str:
    from edge_sparse.errors import EdgeSparseError
    from edge_sparse.targets import list_targets

    t, _, k = b.partition(":")
    if t not in list_targets():
        raise EdgeSparseError(f"--budgets {b!r}: not a target; valid: {', '.join(list_targets())}, "
                              f"or <target>:<k>x (k times faster than the dense model there)")
    if k:
        try:
            ok = k.endswith("x") and float(k[:-1]) > 1
        except ValueError:
            ok = False
        if not ok:
            raise EdgeSparseError(f"--budgets {b!r}: a relative budget is <target>:<k>x with k > 1, e.g. host:2x")
    return b


def _trained(net, splits, cfg, d: Path, msg: str):
    """`net` trained with `cfg` and saved under `d` (checkpointed in `d`/ckpt, so a kill resumes), or, when an
    earlier run finished it, its saved weights loaded; returns `net`."""
    from safetensors.torch import load_file

    from edge_sparse import models
    from edge_sparse.train import fit

    f = d / "model.safetensors"
    if f.is_file():
        net.load_state_dict(load_file(str(f)))
    else:
        _log(msg)
        fit(net, splits, cfg, ckpt_dir=d / "ckpt", resume=True, distributed=False)
        models.save(net, d, arch="compare-peer", kwargs={})  # weights only: the caller rebuilds the architecture
        shutil.rmtree(d / "ckpt", ignore_errors=True)
    return net


def _reinit(model):
    """Fresh weights for an architecture (a width-multiplier net is trained from scratch, not from sliced weights)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return model


def _tp_prune(dense, example, pricer, budget_ms: float, round_to: int,
              ratios=tuple(round(0.02 * i, 2) for i in range(1, 46))):
    """Torch-Pruning's recipe: MetaPruner, GroupMagnitudeImportance(p=2), global pruning, round_to; of the pruning
    `ratios` (default 0.02, 0.04, ... 0.90) the smallest whose model fits `budget_ms` — what a user does: raise the
    ratio until the model fits. A grid, not a bisection: upstream round_to rounds kept channels *down*, so a high
    ratio can empty a layer and TP then skips it (at 0.95 the ResNet-8 comes back dense) — predicted latency is not
    monotonic in the ratio, and the model "closest to the budget from below" can be a far harder-pruned one past
    such a jump (host 1.3x: ratio 0.72 where 0.16 fits). Returns (model, ratio, (ratio, p90) of
    the fastest model tried); (None, None, fastest) when none fits."""
    import torch_pruning as tp

    from edge_sparse.pruning import _classifier_layers

    fastest = (None, float("inf"))
    for r in ratios:
        m = copy.deepcopy(dense).eval()
        ign = [l for l in m.modules() if any(l is c for c in _classifier_layers(m, example))]
        tp.pruner.MetaPruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=r,
                             global_pruning=True, round_to=round_to, ignored_layers=ign).step()
        p90 = pricer.predict(m, example)["p90"]
        if p90 <= budget_ms:
            return m, r, fastest
        if p90 < fastest[1]:
            fastest = (r, p90)
    return None, None, fastest


def width_multiplier(al, budget_ms: float, round_to: int):
    """The largest single width factor alpha (every coupled group at alpha x its dense width, rounded to the
    channel multiple, never below one multiple) whose network the same latency model fits under `budget_ms`,
    as an `Allocation` the allocator can apply; None when even the narrowest does not fit."""
    from edge_sparse.allocate import Allocation

    for i in range(100, 4, -1):
        a = i / 100
        keep = {g.name: min(g.size, max(round_to, int(round(a * g.size / round_to)) * round_to)) for g in al.groups}
        r = al.price(keep)
        if r["p90"] <= budget_ms:
            return Allocation(f"width x{a:.2f}", keep, r["p90"], r["p50"]), a
    return None, None


def _width_allocation(b):
    """(the Allocator over build `b`'s dense model, the width-multiplier allocation under its budget, alpha)."""
    from edge_sparse import models, pipeline
    from edge_sparse.allocate import Allocator

    pr = pipeline.pricer(b)
    src, _ = models.load(b.dirs["train"] / "dense")
    al = Allocator(src, b.example(), pr, b.target.channel_multiple)
    return (al, *width_multiplier(al, pr.effective_budget_ms, b.target.channel_multiple))


def width_net(b, d: Path):
    """The width peer of build `b` (its widths found again as `run_point` found them) with the weights saved in
    `d`/net by an earlier `make compare`; None when there are none."""
    from safetensors.torch import load_file

    f = d / "net" / "model.safetensors"
    if not f.is_file():
        return None
    al, a, _ = _width_allocation(b)
    net = al.apply(a).model
    net.load_state_dict(load_file(str(f)))
    return net.eval()


def train_step_ratio(big, small, example, batch_size: int, rounds: int = 5, steps: int = 4,
                     device: str = "cpu") -> float:
    """How many training steps (forward, backward, SGD update on one batch) of `small` fit in the time of one of
    `big` on `device` (the one the peers train on): the median over `rounds` of the ratio within each round (the two
    nets timed back to back, `steps` each, after one untimed warm-up step each), so a burst of the shared machine's
    load moves one round, not the result."""
    import copy as _copy

    import torch

    nets = {"big": _copy.deepcopy(big).train().to(device), "small": _copy.deepcopy(small).train().to(device)}
    x = torch.randn(batch_size, *example.shape[1:], device=device)
    y = torch.randint(0, 2, (batch_size,), device=device)
    opts = {k: torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9) for k, n in nets.items()}

    def step(k):
        opts[k].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(nets[k](x), y).backward()
        opts[k].step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # kernels run asynchronously: time them, not their launch

    for k in nets:
        step(k)
    times = {k: [] for k in nets}
    for _ in range(rounds):
        for k in nets:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(k)
            times[k].append(time.perf_counter() - t0)
    return statistics.median(b / s for b, s in zip(times["big"], times["small"]))


def _export(model, splits, calib, d: Path) -> Path:
    from edge_sparse.data import normalize_np
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    d.mkdir(parents=True, exist_ok=True)
    if not (d / "model.tflite").is_file():
        eonnx.export_fp32(model.eval(), splits.input_shape, d / "model_fp32.onnx")
        etflite.export(d / "model_fp32.onnx", normalize_np(calib, splits.mean, splits.std, "NHWC"),
                       d / "model_fp32.tflite", d / "model.tflite")
    return d / "model.tflite"


def run_point(budget: str, seed: int, quick: bool, methods: list[str], points: list[dict], save,
              model: str = DEFAULT_MODEL, data: Data = Data()) -> None:
    import torch

    from edge_sparse import _io, models, pipeline, verify
    from edge_sparse.config import BuildConfig
    from edge_sparse.pruning import count

    # gates measured, not enforced: a budget whose shipped model misses a gate is still a row of the comparison
    cfg = dataclasses.replace(BuildConfig.quick(seed=seed) if quick else BuildConfig(seed=seed), enforce_parity=False,
                              enforce_accuracy_floor=False, model=model, dataset=data.dataset, data_dir=data.data_dir)
    cfg = dataclasses.replace(cfg, train=cfg.train.replace(device=data.device),
                              finetune=cfg.finetune.replace(device=data.device))  # the peers train with these too
    tname = _target_name(budget)
    tag = _tag(budget, seed, quick, model, data)
    work = OUT / tag.replace(":", "-")
    have = {p["method"] for p in points if p["key"] == tag and "error" not in p}
    if all(m in have for m in methods):
        return
    _log(f"compare {tag}: the default build ...")
    b = pipeline.run(tname, cfg, out_dir=work / "dist", cache_dir=CACHE, until_stage="verify")
    splits, pr = b.splits, pipeline.pricer(b)
    example = b.example()
    budget_ms = pr.effective_budget_ms
    calib = pipeline._calibration(b)
    test = splits.test.materialize()
    epochs_total = cfg.train.epochs + cfg.finetune.epochs
    paths: dict[str, Path] = {"shipped": b.dirs["export"] / "model.tflite", "dense": b.dirs["export"] / "dense_int8.tflite"}
    info: dict[str, dict] = {"shipped": {"macs": b.results["finetune"]["final"]["macs"],
                                         "predicted_p90_ms": b.results["finetune"]["final"]["predicted_p90_ms"],
                                         "recipe": f"default build ({cfg.train.epochs} dense + {cfg.finetune.epochs} fine-tune epochs)",
                                         "train_seconds": round(sum(b.results[s].get("_seconds", 0) for s in
                                                                    ("train", "search", "finetune", "reference")), 1),
                                         **_int8_parity(b.results["verify"])}}
    # rows kept from an earlier run were paired image by image against the shipped model of that run: if this run's
    # shipped model is another one (a code change, another CPU's float kernels) and a peer's model is not on this
    # machine to be paired again, the peer is trained again rather than left paired against a model no longer shown
    shipped_logits = verify.run_tflite(paths["shipped"], test.x, splits.mean, splits.std)
    shipped_id = {"sha": _io.sha256_file(paths["shipped"])[:16], "acc": verify.top1(shipped_logits, test.y)["acc"]}
    stale = stale_rows(points, tag, shipped_id)
    for m in sorted(stale):
        if m in methods and m in PEERS and not (work / m / "model.tflite").is_file():
            _log(f"compare {tag}: {m} was paired against another shipped model and its model is not here: trained again")
            have.discard(m)
    dense_model, _ = models.load(b.dirs["reference"] / "dense")
    info["dense"] = {"macs": count(dense_model, example)[1], "predicted_p90_ms": round(pr.dense_p90_ms, 5),
                     "recipe": "the build's dense reference"}
    if "global" in methods and "global" not in have:
        _log(f"compare {tag}: the default build with --search global ...")
        g = pipeline.run(tname, dataclasses.replace(cfg, search="global"), out_dir=work / "dist-global",
                         cache_dir=CACHE, until_stage="verify")
        fin = g.results["finetune"]["final"]
        paths["global"] = g.dirs["export"] / "model.tflite"
        info["global"] = {"macs": fin["macs"], "predicted_p90_ms": fin["predicted_p90_ms"],
                          "sparsity": g.results["search"]["chosen"].get("sparsity"),
                          "recipe": "default build, --search global (one threshold per candidate sparsity)",
                          "train_seconds": round(sum(g.results[s].get("_seconds", 0) for s in
                                                     ("train", "search", "finetune", "reference")), 1)}
    elif "global" in have and "global" in methods:  # cached: in the stage cache, re-timed beside the others
        g = pipeline.run(tname, dataclasses.replace(cfg, search="global"), out_dir=work / "dist-global",
                         cache_dir=CACHE, until_stage="verify")
        paths["global"] = g.dirs["export"] / "model.tflite"
        info["global"] = {k: v for k, v in next(p for p in points if p["key"] == tag and p["method"] == "global").items()
                          if k in ("macs", "predicted_p90_ms", "sparsity", "recipe", "train_seconds")}
    for m in ("width", "width-time", "tp"):  # finished in an earlier run: timed again beside the others
        if m in have and (work / m / "model.tflite").is_file():
            paths[m] = work / m / "model.tflite"
            info[m] = {k: v for k, v in next(p for p in points if p["key"] == tag and p["method"] == m).items()
                       if k in ("macs", "predicted_p90_ms", "widths", "alpha", "recipe", "train_seconds", "pruning_ratio",
                                "epochs", "train_step_ratio")}
    todo = [wm for wm in ("width", "width-time") if wm in methods and wm not in have]
    al, a, alpha = _width_allocation(b) if todo else (None, None, None)  # one network for both width peers
    for wm in todo:
        d = work / wm
        if a is None:
            info[wm] = {"error": f"no equal-width network fits {budget_ms:.4g} ms"}
            continue
        torch.manual_seed(seed)
        net = _reinit(al.apply(a).model)
        epochs, ratio, why = epochs_total, None, f"{epochs_total} epochs from scratch"
        if wm == "width-time":
            rf = d / "train_step_ratio.json"  # measured once: a resumed training keeps its epoch count
            if rf.is_file():
                ratio = json.loads(rf.read_text())["ratio"]
            else:
                ratio = train_step_ratio(al.dense, net, example, cfg.train.batch_size, device=data.device)
                _io.write_json(rf, {"ratio": ratio})
            epochs = round(cfg.train.epochs * ratio) + cfg.finetune.epochs
            why = (f"{epochs} epochs from scratch (the build's {cfg.train.epochs} dense epochs x {ratio:.2f}, the "
                   f"narrow net's training-step speedup measured here, + its {cfg.finetune.epochs} fine-tune epochs)")
        rec = cfg.train.replace(epochs=epochs, sparsity_reg="none", seed=seed)
        t0 = time.time()
        _trained(net, splits, rec, d / "net", f"compare {tag}: {wm}: width multiplier {a.describe()}, {why} ...")
        paths[wm] = _export(net, splits, calib, d)
        info[wm] = {"macs": count(net, example)[1], "predicted_p90_ms": round(pr.predict(net, example)["p90"], 5),
                    "widths": a.keep, "alpha": alpha, "epochs": epochs,
                    "recipe": f"one width factor for every layer, {why} ({rec.schedule} lr {rec.lr:g}, augment "
                              f"{rec.augment}, no sparsity term, no KD)",
                    "train_seconds": round(time.time() - t0, 1)}
        if ratio is not None:
            info[wm]["train_step_ratio"] = round(ratio, 3)
    if "tp" in methods and "tp" not in have:
        d = work / "tp"
        t0 = time.time()
        dense_tp = models.create(cfg.model, **b.arch_kwargs)
        torch.manual_seed(seed)
        dense_tp = _reinit(dense_tp)
        rec = cfg.train.replace(sparsity_reg="none", seed=seed)
        # the dense model depends on the seed and model, not on the budget: trained once, shared by every budget
        rest = _tag("", seed, quick, model, data).strip("/")
        dd = OUT / "tp-dense" / rest
        earlier = sorted(OUT.glob(f"*/{rest}/tp/dense/model.safetensors"))  # trained in a budget's folder before
        if not (dd / "model.safetensors").is_file() and earlier:
            dd.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(earlier[0].parent, dd, dirs_exist_ok=True)
        dense_tp = _trained(dense_tp, splits, rec, dd,
                            f"compare {tag}: Torch-Pruning recipe: dense {rec.epochs} epochs without the sparsity term ...")
        net, ratio, fastest = _tp_prune(dense_tp, example, pr, budget_ms, b.target.channel_multiple)
        if net is None:
            info["tp"] = {"error": f"no pruning ratio of 0.02-0.90 fits {budget_ms:.4g} ms: the fastest, ratio "
                                   f"{fastest[0]:.2f}, predicts {fastest[1]:.4g} ms (global L2 ranking keeps the "
                                   f"costliest channels; past it, round_to empties layers and TP skips them)"}
        else:
            ft = cfg.finetune.replace(kd_alpha=0.0, seed=seed + 1)
            _trained(net, splits, ft, d / "net", f"compare {tag}: Torch-Pruning recipe: ratio {ratio:.3f}, "
                                                 f"fine-tune {ft.epochs} epochs ...")
            paths["tp"] = _export(net, splits, calib, d)
            info["tp"] = {"macs": count(net, example)[1], "predicted_p90_ms": round(pr.predict(net, example)["p90"], 5),
                          "pruning_ratio": round(ratio, 4), "train_seconds": round(time.time() - t0, 1),
                          "recipe": f"dense {rec.epochs} epochs ({rec.schedule}, no sparsity term) + MetaPruner L2 global "
                                    f"round_to {b.target.channel_multiple} + {ft.epochs} fine-tune epochs (lr {ft.lr:g})"}
    from edge_sparse.latency import measure_many

    names = [m for m in METHODS if m in paths]
    _log(f"compare {tag}: timing {', '.join(names)} side by side (1 thread) ...")
    timing = dict(zip(names, measure_many([paths[m] for m in names], threads=1, runs=600, rounds=20)))
    logits = {m: shipped_logits if m == "shipped" else verify.run_tflite(paths[m], test.x, splits.mean, splits.std)
              for m in names}
    # this run re-times every model of the budget; an earlier run's error rows for it are superseded
    # a method that failed this run (its new error row below) and a stale row nothing re-paired are dropped too
    redo = set(names) | {m for m in methods if "error" in info.get(m, {})}
    for m in sorted(stale - redo):
        _log(f"compare {tag}: {m}'s row was paired against another shipped model and was not re-run: dropped "
             f"(--methods {m} runs it again)")
    points[:] = [p for p in points if not (p["key"] == tag and (p["method"] in redo | stale or "error" in p))]
    for m in names:
        row = {"key": tag, "budget": budget, "seed": seed, "quick": quick, "method": m, "model": model,
               **data.row(), "budget_ms": round(budget_ms, 5), "shipped_sha": shipped_id["sha"],
               "latency_source": pr.source, **info.get(m, {})}
        row.update({"top1": verify.top1(logits[m], test.y), "host_p50_ms": round(timing[m]["p50"], 5),
                    "host_p90_ms": round(timing[m]["p90"], 5), "correct": pack_correct(logits[m], test.y)})
        if m != "shipped":
            row["shipped_minus_this"] = verify.paired_diff(logits["shipped"], logits[m], test.y)
        points.append(row)
    for m in methods:  # a method that produced no model (no width / ratio fits the budget): its row says why
        if m not in names and "error" in info.get(m, {}):
            points.append({"key": tag, "budget": budget, "seed": seed, "quick": quick, "method": m, "model": model,
                           **data.row(), **info[m]})
    save()


def _int8_parity(verify_result: dict) -> dict:
    """The shipped model's fp32 top-1 and its int8 .tflite's agreement with it, on the whole test split (the build's
    verify stage measures both)."""
    test = verify_result.get("accuracy", {}).get("test", {})
    if "int8_agreement_pct" not in test:
        return {}
    return {"fp32_top1_pct": test["torch_fp32"]["acc"], "int8_agreement_pct": test["int8_agreement_pct"]}


def parity_lines(points: list[dict]) -> list[str]:
    """One line per budget whose shipped rows recorded their int8 agreement: mean and per seed."""
    out = []
    for k in dict.fromkeys(_label(p) for p in points):
        rs = sorted((p for p in points if _label(p) == k and p["method"] == "shipped" and "int8_agreement_pct" in p),
                    key=lambda p: p["seed"])
        if rs:
            out.append(f"- {k}: {statistics.fmean(p['int8_agreement_pct'] for p in rs):.2f} % ("
                       + "; ".join(f"seed {p['seed']}: {p['int8_agreement_pct']:.2f} %, fp32 {p['fp32_top1_pct']:.2f} % "
                                   f"→ int8 {p['top1']['acc']:.2f} %" for p in rs) + ")")
    return ["\nThe shipped model's int8 agreement with its own fp32 model (same top-1 class, whole test split), where "
            "recorded:"] + out if out else []


PEERS = ("width", "width-time", "tp")  # trained by this benchmark, kept in its work folder (the others: build cache)


def stale_rows(points: list[dict], tag: str, shipped: dict) -> set[str]:
    """The methods of point `tag` whose stored rows were paired image by image against another shipped model than
    `shipped` ({"sha", "acc"}: this run's). A row names the model it was paired against by its `shipped_sha`; a
    row written before that was recorded was paired against the stored shipped row (known by its sha, or else by
    its top-1). The shipped and dense rows are re-made by every run of the point."""
    old = next((p for p in points if p["key"] == tag and p["method"] == "shipped" and "top1" in p), None)
    before = (old["shipped_sha"] == shipped["sha"] if "shipped_sha" in old else old["top1"]["acc"] == shipped["acc"]) \
        if old is not None else True
    return {p["method"] for p in points
            if p["key"] == tag and p["method"] not in ("shipped", "dense") and "top1" in p
            and not (p["shipped_sha"] == shipped["sha"] if "shipped_sha" in p else before)}


def _tag(budget: str, seed: int, quick: bool, model: str, data: Data = Data()) -> str:
    """A point's key in compare.json (and its work folder): the default model's and data's keys predate
    --model and --dataset."""
    return f"{budget}/seed{seed}{'/quick' if quick else ''}{'' if model == DEFAULT_MODEL else '/' + model}{data.key}"


def _label(p: dict) -> str:
    m, ds, dev = p.get("model", DEFAULT_MODEL), p.get("dataset", Data.dataset), p.get("device", "cpu")
    return (p["budget"] + ("" if m == DEFAULT_MODEL else f" ({m})") + ("" if ds == Data.dataset else f" on {ds}")
            + ("" if dev == "cpu" else f" trained on {dev}") + (" (QUICK)" if p["quick"] else ""))


def markdown(points: list[dict]) -> str:
    L = ["<!-- compare:begin -->", "## The shipped model against the alternatives at equal latency (`make compare`)\n"]
    keys = list(dict.fromkeys(_label(p) for p in points))
    L.append("| budget | method | seeds | int8 top-1, whole test split (%) | shipped − this (pt): mean [95 %: seeds and images] (paired 95 % per seed) | "
             "MACs | predicted p90 (ms) | host p90, 1 thread (ms) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for k in keys:
        ships = {p["seed"]: p for p in points if _label(p) == k and p["method"] == "shipped" and "top1" in p}
        for m in METHODS:
            rs = sorted((p for p in points if _label(p) == k and p["method"] == m), key=lambda p: p["seed"])
            if not rs:
                continue
            ok = [p for p in rs if "top1" in p]
            if not ok:
                L.append(f"| {k} | {m} | {','.join(str(p['seed']) for p in rs)} | {rs[0].get('error', 'no result')} | | | | |")
                continue
            acc = [p["top1"]["acc"] for p in ok]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            ci = ok[0]["top1"]["ci95"] if len(ok) == 1 else None
            accs = f"{statistics.fmean(acc):.2f} ± {sd:.2f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")
            pairs = [(ships.get(p["seed"]), p) for p in ok if "shipped_minus_this" in p]
            diffs = [p["shipped_minus_this"] for _, p in pairs]
            ds = "–" if not diffs else " ".join(x for x in (
                f"{statistics.fmean(d['diff_pt'] for d in diffs):+.2f}", seed_interval(diffs, pairs),
                "(" + "; ".join(f"{d['ci95_pt'][0]:+.2f}…{d['ci95_pt'][1]:+.2f}" for d in diffs) + ")") if x)
            L.append(f"| {k} | {m} | {','.join(str(p['seed']) for p in ok)} | {accs} | {ds} | "
                     f"{statistics.fmean(p['macs'] for p in ok) / 1e6:.2f} M | "
                     f"{statistics.fmean(p['predicted_p90_ms'] for p in ok):.4f} | {statistics.fmean(p['host_p90_ms'] for p in ok):.4f} |")
    L.append("\nmean ± sd over seeds (one seed: its 95 % Wilson interval in brackets). shipped − this: the mean of the "
             "per-seed paired differences; in square brackets its 95 % interval, the seeds' spread (Student t) and the "
             "test images' sampling combined. The images are the same for every seed: where the rows record which images "
             "each model gets right, their part is the paired interval of the per-image difference averaged over seeds; "
             "for rows from before that was recorded, it is the mean per-seed paired half-width (the conservative end, "
             "which more seeds do not narrow). Recipes: "
             + "; ".join(f"`{m}`: {next((p['recipe'] for p in points if p['method'] == m and 'recipe' in p), '–')}"
                         for m in METHODS) + ".")
    L += parity_lines(points)
    quick = any(p["quick"] for p in points)
    if not quick:
        L.append(wall_time_note(points))
    L.append(f"\n![top-1 vs measured p90]({'compare-quick.png' if quick else 'benchmarks/compare.png'})")
    L.append("<!-- compare:end -->")
    return "\n".join(L) + "\n"


# Student t's 97.5th percentile by degrees of freedom (1-30); beyond 30 the normal 1.96 is within 2 %
T975 = dict(enumerate((12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
                       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
                       2.045, 2.042), start=1))


def pack_correct(logits, labels) -> str:
    """Which test images a model gets right, as base64 of one bit per image (1.7 KB for 10,000 images): what
    a later rendering needs to pair it with the shipped model of every seed at once."""
    import base64

    import numpy as np

    return base64.b64encode(np.packbits(logits.argmax(1) == labels).tobytes()).decode("ascii")


def _unpack_correct(p: dict):
    import base64

    import numpy as np

    if "correct" not in p:
        return None
    bits = np.unpackbits(np.frombuffer(base64.b64decode(p["correct"]), np.uint8))[: p["top1"]["n"]]
    return bits.astype(np.float64)


def seed_interval(diffs: list[dict], pairs: Optional[list] = None) -> str:
    """The 95 % interval of the mean paired difference over seeds, "[lo…hi]" ("" for one seed). Two sources of
    error, combined as independent: the seeds' spread (Student t on the per-seed differences) and the sampling of
    the test images, which every seed shares. With every seed's (shipped row, row) pair recording which images it
    gets right (`pairs`, `correct`), the images' part is the paired interval of the per-image difference averaged
    over seeds; without, it is the per-seed paired intervals' mean half-width, as if the images the two models
    disagree on were the same for every seed (the conservative end)."""
    import numpy as np

    k = len(diffs)
    if k < 2:
        return ""
    d = [x["diff_pt"] for x in diffs]
    m = statistics.fmean(d)
    seeds = T975.get(k - 1, 1.96) * statistics.stdev(d) / k ** 0.5
    bits = [(_unpack_correct(a), _unpack_correct(b)) for a, b in pairs or [] if a is not None]
    if len(bits) == k and all(a is not None and b is not None and len(a) == len(b) == len(bits[0][0]) for a, b in bits):
        per_image = np.mean([a - b for a, b in bits], axis=0)
        images = 100 * 1.96 * float(per_image.std(ddof=1)) / len(per_image) ** 0.5
    else:
        images = statistics.fmean((x["ci95_pt"][1] - x["ci95_pt"][0]) / 2 for x in diffs)
    h = (seeds ** 2 + images ** 2) ** 0.5
    return f"[{m - h:+.2f}…{m + h:+.2f}]"


def wall_time_note(points: list[dict]) -> str:
    """What the rows' trainings cost, from the time each recorded (`train_seconds`), per (budget, seed) and in all."""
    per: dict[str, float] = {}
    for p in points:
        if p.get("train_seconds"):
            per[p["key"]] = per.get(p["key"], 0.0) + p["train_seconds"]
    if not per:
        return ""
    mins = sorted(v / 60 for v in per.values())
    return (f"\nRecorded training time (`train_seconds` in benchmarks/compare.json): **{sum(per.values()) / 3600:.1f} h** "
            f"over {len(per)} (budget, seed) points, {mins[0]:.0f}–{mins[-1]:.0f} min each. Not one run's wall time: a "
            f"training resumed from its checkpoint records only its last part, a peer found trained records seconds, "
            f"and the build's dense stage, shared through the build cache, counts in both `shipped` and `global`.")


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    marks = {"shipped": "o", "global": "v", "width": "s", "width-time": "P", "tp": "^", "dense": "D"}
    for m in METHODS:
        ok = [p for p in points if p["method"] == m and "top1" in p]
        if ok:
            ax.errorbar([p["host_p90_ms"] for p in ok], [p["top1"]["acc"] for p in ok],
                        yerr=[[p["top1"]["acc"] - p["top1"]["ci95"][0] for p in ok],
                              [p["top1"]["ci95"][1] - p["top1"]["acc"] for p in ok]],
                        fmt=marks[m], label=m, capsize=3)
    ax.set_xlabel("measured p90 on this host, 1 thread (ms)")
    ax.set_ylabel("int8 top-1, whole test split (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run whose every row is an error has nothing to label
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from edge_sparse import _io
    from edge_sparse.errors import EdgeSparseError

    p = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    p.add_argument("--budgets", default="rpi4,host:1.3x,host:1.6x")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a registered architecture (default: the build's, resnet8)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dataset", default=Data.dataset, help="the build's datasets: fashion-mnist (default), cifar10, "
                                                           "cifar100, folder (with --data-dir)")
    p.add_argument("--data-dir", help="the dataset's directory (any dataset but fashion-mnist)")
    p.add_argument("--device", default=Data.device, help="where the builds and peers train: cpu (default) or cuda")
    p.add_argument("--quick", action="store_true", help="one budget (rpi4), one seed, the QUICK build's slices")
    p.add_argument("--write", action="store_true", help="splice the table into BENCHMARKS.md and draw the plot")
    a = p.parse_args(argv)
    try:
        methods = [m for m in a.methods.split(",") if m]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise EdgeSparseError(f"--methods: unknown {', '.join(bad) or '(none given)'}; valid: {', '.join(METHODS)}")
        if "shipped" not in methods:
            methods.insert(0, "shipped")
        try:
            seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        except ValueError:
            raise EdgeSparseError(f"--seeds {a.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
        budgets = [_parse_budget(x) for x in a.budgets.split(",") if x]
        from edge_sparse.models import MODELS

        if a.model not in MODELS:
            raise EdgeSparseError(f"--model {a.model!r}: not a registered architecture; valid: {', '.join(MODELS.names())}")
        data = _parse_data(a.dataset, a.data_dir, a.device)
        if a.quick:
            budgets, seeds = budgets[:1], seeds[:1]
    except EdgeSparseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    saved_env = os.environ.get("EDGE_SPARSE_TARGETS")
    os.environ["EDGE_SPARSE_TARGETS"] = str(_targets_dir(budgets, a.model, dataset=data.dataset))
    # committed: BENCHMARKS.md's table and plot are made from it; a QUICK run (a smoke test, not a claim) keeps its
    # points, table and plot under benchmarks/out/ and never touches BENCHMARKS.md
    # another dataset's comparison (a claim about the user's data, not the committed table's) keeps its own file too
    side = "compare-quick" if a.quick else None if data == Data() else f"compare-{data.dataset}"
    store = ROOT / "benchmarks" / "compare.json" if side is None else OUT.parent / f"{side}.json"
    points = json.loads(store.read_text()) if store.is_file() else []
    save = lambda: _io.write_json(store, points)  # noqa: E731
    t0 = time.time()
    for bgt in budgets:
        for s in seeds:
            try:
                run_point(bgt, s, a.quick, methods, points, save, a.model, data)
            except EdgeSparseError as e:  # a budget a method cannot meet: that row says so, the run goes on
                _log(f"compare {bgt}/seed{s}: {e}")
                points.append({"key": _tag(bgt, s, a.quick, a.model, data), "budget": bgt, "seed": s,
                               "quick": a.quick, "method": "shipped", "model": a.model, **data.row(), "error": str(e)})
                save()
    if saved_env is None:
        os.environ.pop("EDGE_SPARSE_TARGETS", None)
    else:
        os.environ["EDGE_SPARSE_TARGETS"] = saved_env
    _log(f"compare: this run took {time.time() - t0:.0f} s ({len(budgets)} budget(s) x {len(seeds)} seed(s); points "
         f"finished in an earlier run are only re-timed)")
    sel = [p for p in points if p["quick"] == a.quick]
    md = markdown(sel)
    print(md)
    if side is not None:
        _io.write_text(OUT.parent / f"{side}.md", md)
        plot(sel, OUT.parent / f"{side}.png")
        _log(f"compare: table and plot in {OUT.parent}/{side}.{{md,png}} (BENCHMARKS.md is left as it is)")
    elif a.write:
        from benchmarks import splice

        plot(sel, ROOT / "benchmarks" / "compare.png")
        splice(md, "compare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
