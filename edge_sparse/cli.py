"""`edge-sparse <command>`: thin wrappers over the pipeline and its stages.

    edge-sparse build --target rpi4 [--dataset cifar10 --data-dir DIR] [--quick] [--from S] [--until S]
    edge-sparse train|prune|export --target rpi4 ...   (the build, stopped after that stage; cached)
    edge-sparse bench --target rpi4 [-- bench.py flags]   (the bundle's harness on this host)
    edge-sparse report --target rpi4        (the bundle and report.md again, from the cache)
    edge-sparse verify --bundle dist/rpi4   (manifest hashes and accuracy on eval.npz, re-checked)
    edge-sparse targets | models
    edge-sparse calib --dataset fashion-mnist --count 520
    edge-sparse calibrate rpi4 bench.json
    edge-sparse study --target rpi4 --sparsity 0,0.3,0.5,0.7,0.85

Errors print one line, `error: ...`, and exit non-zero (2 bad input, 3 budget unreachable,
4 a numeric gate failed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from edge_sparse.errors import EdgeSparseError

STAGE_ALIASES = {"train": "train", "prune": "search", "export": "export"}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one `error: ...` line naming the flag, exit 2 (not a usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return vals


def _build_args(p: argparse.ArgumentParser) -> None:
    from edge_sparse.pipeline import STAGES

    p.add_argument("--target", required=True, help="profile name in targets/ (see `edge-sparse targets`)")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) | cifar10 | cifar100 | folder")
    p.add_argument("--data-dir", help="the dataset's directory (not needed for fashion-mnist)")
    p.add_argument("--model", default="resnet8", help="registered architecture (see `edge-sparse models`), or your own: "
                   "path/to/net.py:make_model or package.module:make_model (a function returning an nn.Module)")
    p.add_argument("--weights", help="start from these trained weights: .safetensors, or a torch checkpoint read with "
                   "weights_only=True (never an arbitrary pickle); the report's dense reference is then this model as is")
    p.add_argument("--no-train", action="store_true", help="with --weights: no training; prune with a data-driven "
                   "criterion, re-estimate BN statistics, export, verify, bundle (minutes)")
    p.add_argument("--criterion", default=None,
                   help="bn_scale | l1 | l2 | taylor (default: bn_scale; taylor with --no-train)")
    p.add_argument("--sparsities", type=_floats, help="candidate sparsities for --search global, e.g. 0.3,0.5,0.7")
    p.add_argument("--search", choices=("allocate", "global"), default="allocate",
                   help="allocate (default): per-group widths under the target's latency table, filled to the budget; "
                        "global: one importance threshold per candidate sparsity")
    p.add_argument("--epochs", type=int, help="epochs of the dense model with the sparsity objective (default 9)")
    p.add_argument("--lr", type=float, help="peak learning rate of the dense training (default 0.1)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs after pruning (default 9)")
    p.add_argument("--finetune-lr", type=float, help="peak learning rate of the fine-tune (default 0.1)")
    p.add_argument("--kd-alpha", type=float, help="weight of distillation from the dense model in the fine-tune "
                   "(default 0: labels alone, measured better here; e.g. 0.8 to distil)")
    p.add_argument("--kd-temperature", type=float, help="distillation temperature (default 4)")
    p.add_argument("--sparsity-lambda", type=float, help="strength of the L1-on-BN-scales objective")
    p.add_argument("--sparsity-weighting", choices=("uniform", "cost"),
                   help="cost: scale each channel's L1 term by its feature map's H*W*C (default uniform)")
    p.add_argument("--adv-train", choices=("none", "pgd"), help="PGD adversarial fine-tuning")
    p.add_argument("--prune-steps", type=int, help="reach the sparsity in this many prune -> fine-tune steps (default 1)")
    p.add_argument("--no-dense-reference", action="store_true",
                   help="= --reference warmup (kept for scripts; --reference wins when both are given)")
    p.add_argument("--reference", choices=("teacher", "retrain", "warmup"),
                   help="the dense reference: teacher = the dense model the pruning started from (also the distillation "
                   "teacher); retrain = that model given the fine-tune epochs too; warmup = the dense model as is")
    p.add_argument("--augment", choices=("none", "crop", "crop_flip"),
                   help="training augmentation of both trainings (default none: the small default nets underfit "
                   "Fashion-MNIST; crop_flip for data a model overfits)")
    p.add_argument("--schedule", choices=("cosine", "onecycle", "constant"),
                   help="learning-rate schedule of the dense training and the fine-tune")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--workers", type=int, help="processes decoding folder images (default: one per core, at most 8; "
                   "0: the main process); results do not depend on it")
    p.add_argument("--skip-bad-images", action="store_true", help="folder datasets: leave unreadable images "
                   "(truncated, empty, not an image) out, counted in the report, instead of stopping at the first")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="fp32 (default) or bf16: bfloat16 autocast of the trainings' forward passes (CUDA only)")
    p.add_argument("--target-device", help="user@host (ssh) or adb[:serial]: time the search's finalists on the device "
                   "itself and ship only one that measured within budget (make build DEVICE=...)")
    p.add_argument("--image-size", "--input-size", dest="image_size", type=int,
                   help="side length for folder datasets (default 64); must be what your model expects")
    p.add_argument("--accuracy-floor", type=float, help="minimum int8 top-1 (%%) the shipped model must reach; the "
                   "profile's floor is stated for its default dataset: set your own for your data")
    p.add_argument("--robust-n", type=int, help="test images attacked in the robustness stage (default 500, QUICK "
                   "200; 0 skips the stage: no robustness numbers in the bundle, e.g. for `make zoo`); `study`: per "
                   "sparsity point (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small slice, one short epoch: a valid bundle in minutes")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="re-run from this stage on (ignore its cache)")
    p.add_argument("--until", dest="until_stage", choices=STAGES, help="stop after this stage")
    p.add_argument("--out", default="dist", help="bundle parent directory (default dist/)")
    p.add_argument("--cache", default="build/cache", help="stage cache directory (default build/cache/)")


def _config(a):
    from edge_sparse.config import BuildConfig

    base = BuildConfig.quick() if a.quick else BuildConfig()
    criterion = a.criterion or ("taylor" if a.no_train else "bn_scale")  # --no-train: weights not trained for sparsity
    kw = {"dataset": a.dataset, "data_dir": a.data_dir, "model": a.model, "criterion": criterion, "seed": a.seed,
          "search": a.search, "target_device": a.target_device, "weights": a.weights, "no_train": a.no_train,
          "workers": a.workers, "skip_bad_images": a.skip_bad_images}
    if a.workers is not None and a.workers < 0:
        raise EdgeSparseError(f"--workers must be >= 0 (0: decode in the main process), got {a.workers}")
    if a.no_train and not a.weights:
        raise EdgeSparseError("--no-train needs --weights: there is nothing trained to prune")
    if a.seed < 0 or a.seed >= 2**32:
        raise EdgeSparseError(f"--seed must be in [0, 2**32), got {a.seed}")
    if a.sparsities is not None:
        if not a.sparsities:
            raise EdgeSparseError(f"--sparsities: no numbers given; e.g. --sparsities 0.3,0.5,0.7")
        kw["sparsities"] = a.sparsities
    if getattr(a, "accuracy_floor", None) is not None:
        if not 0 <= a.accuracy_floor <= 100:
            raise EdgeSparseError(f"--accuracy-floor must be a percentage in [0, 100], got {a.accuracy_floor:g}")
        kw["accuracy_floor_pct"] = a.accuracy_floor
    if a.robust_n is not None:
        if a.robust_n < 0:
            raise EdgeSparseError(f"--robust-n must be >= 0 (0 skips the robustness stage), got {a.robust_n}")
        kw["robust_n"] = a.robust_n
    if a.image_size is not None:
        if not 8 <= a.image_size <= 1024:
            raise EdgeSparseError(f"--image-size must be between 8 and 1024 pixels, got {a.image_size}")
        kw["image_size"] = a.image_size
    for flag, v in (("--epochs", a.epochs), ("--finetune-epochs", a.finetune_epochs)):
        if v is not None and v < 0:
            raise EdgeSparseError(f"{flag} must be >= 0, got {v}")
    for flag, v in (("--lr", a.lr), ("--finetune-lr", a.finetune_lr), ("--sparsity-lambda", a.sparsity_lambda),
                    ("--kd-alpha", a.kd_alpha), ("--kd-temperature", a.kd_temperature)):
        if v is not None and not (v >= 0 and v < float("inf")):
            raise EdgeSparseError(f"{flag} must be a finite number >= 0, got {v}")
    if a.kd_alpha is not None and a.kd_alpha > 1:
        raise EdgeSparseError(f"--kd-alpha must be in [0, 1], got {a.kd_alpha}")
    if a.no_dense_reference:
        kw["reference"] = "warmup"
    if a.reference:
        kw["reference"] = a.reference
    if a.prune_steps is not None:
        kw["prune_steps"] = a.prune_steps  # BuildConfig checks it
    train, ft = base.train, base.finetune
    if a.weights and a.epochs is None:  # a pretrained start: one short sparsity-inducing epoch from the weights
        train = train.replace(epochs=1)
    if a.epochs is not None:
        train = train.replace(epochs=a.epochs)
    if a.finetune_epochs is not None:
        ft = ft.replace(epochs=a.finetune_epochs)
    if a.lr is not None:
        train = train.replace(lr=a.lr)
    if a.finetune_lr is not None:
        ft = ft.replace(lr=a.finetune_lr)
    if a.kd_temperature is not None:
        ft = ft.replace(kd_temperature=a.kd_temperature)
    if a.kd_alpha is not None:
        ft = ft.replace(kd_alpha=a.kd_alpha)
    if a.sparsity_lambda is not None:
        train = train.replace(sparsity_lambda=a.sparsity_lambda)
    if a.sparsity_weighting:
        train = train.replace(sparsity_weighting=a.sparsity_weighting)
    if a.adv_train:
        ft = ft.replace(adv_train=a.adv_train)
    if a.augment:
        train, ft = train.replace(augment=a.augment), ft.replace(augment=a.augment)
    if a.schedule:
        train, ft = train.replace(schedule=a.schedule), ft.replace(schedule=a.schedule)
    if a.device:
        train, ft = train.replace(device=a.device), ft.replace(device=a.device)
    if a.precision:
        if a.precision == "bf16" and not (a.device or "cpu").startswith("cuda"):
            raise EdgeSparseError(f"--precision bf16 runs on CUDA only (bfloat16 autocast); the device is "
                                  f"{a.device or 'cpu'}: drop --precision (fp32) or add --device cuda")
        train, ft = train.replace(precision=a.precision), ft.replace(precision=a.precision)
    from edge_sparse.models import MODELS
    from edge_sparse.pruning import CRITERIA

    from edge_sparse import usermodel

    if usermodel.is_ref(a.model):
        usermodel.load_factory(a.model)  # a missing file or a factory that does not import fails here, before any work
    else:
        MODELS.get(a.model)
    if a.weights and not Path(a.weights).expanduser().is_file():
        raise EdgeSparseError(f"--weights {a.weights}: no such file")
    CRITERIA.get(kw["criterion"])
    for s in kw.get("sparsities", ()):
        if not 0 <= s < 1:
            raise EdgeSparseError(f"--sparsities: {s} is outside [0, 1); 1 would remove every channel")
    import dataclasses

    return dataclasses.replace(base, train=train, finetune=ft, **kw)


def cmd_build(a) -> int:
    from edge_sparse.pipeline import run
    from edge_sparse.targets import load_target

    load_target(a.target)  # validate before any work
    until = STAGE_ALIASES.get(a.command, a.until_stage) if a.command != "build" else a.until_stage
    b = run(a.target, _config(a), out_dir=a.out, cache_dir=a.cache, from_stage=a.from_stage, until_stage=until)
    if "bundle" in b.results:
        meta_acc = b.results["verify"]["accuracy"]
        ch = b.results["finetune"]["final"]
        print(f"bundle: {b.results['bundle']['path']}  (sparsity {ch['sparsity']:.2f}, predicted p90 "
              f"{ch['predicted_p90_ms']:.4f} ms <= {b.results['search']['latency']['budget_ms']:.4g} ms, int8 top-1 {meta_acc['tflite_int8']:.2f}%, "
              f"dense fp32 {meta_acc['torch_fp32_dense']:.2f}%)")
    else:
        print(f"stopped after {until}; cache in {a.cache}")
    return 0


def cmd_targets(a) -> int:
    from edge_sparse.targets import list_targets, load_target

    rows = [("target", "device", "runtime", "threads", "p90 budget (ms)", "size (KiB)", "acc floor (%)", "ch. multiple")]
    for name in list_targets():
        t = load_target(name)
        rows.append((t.name, t.device, t.runtime, str(t.threads), t.describe_budget(), f"{t.model_size_budget_kb:g}",
                     f"{t.accuracy_floor_pct:g}", str(t.channel_multiple)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


def cmd_models(a) -> int:
    import torch

    from edge_sparse.models import MODELS, create
    from edge_sparse.pruning import count

    for name in MODELS:
        m = create(name, in_channels=a.in_channels, num_classes=a.num_classes, input_size=a.input_size)
        params, macs = count(m, torch.zeros(1, a.in_channels, a.input_size, a.input_size))
        print(f"{name:<16} params {params:>10,}  MACs {macs:>13,}  ({a.in_channels}x{a.input_size}x{a.input_size})")
    return 0


def cmd_calib(a) -> int:
    from edge_sparse import data, quantize

    if a.count < 1:
        raise EdgeSparseError(f"--count must be >= 1, got {a.count}")
    splits = data.load(a.dataset, a.data_dir, seed=a.seed, image_size=a.image_size)
    x, y = quantize.make(splits, a.count, a.seed)
    cmd = f"edge-sparse calib --dataset {a.dataset} --count {a.count} --seed {a.seed}" + (
        f" --data-dir {a.data_dir}" if a.data_dir else "")
    entry = quantize.write(Path(a.out), a.dataset, x, y, cmd)
    print(f"wrote {Path(a.out) / entry['file']}: {entry['count']} images {entry['shape']} {entry['dtype']}, "
          f"classes {len(entry['class_counts'])}")
    return 0


def cmd_bench(a, rest: list[str]) -> int:
    from edge_sparse.targets import load_target

    load_target(a.target)
    d = Path(a.out) / a.target
    if not (d / "bench.py").is_file():
        raise EdgeSparseError(f"no bundle at {d}; run `make build TARGET={a.target}` first")
    return subprocess.call([sys.executable, str(d / "bench.py"), *rest], cwd=d)


def cmd_verify(a) -> int:
    """Re-check a bundle on disk: manifest hashes, then each model's accuracy on eval.npz vs metadata."""
    import json

    import numpy as np

    from edge_sparse import bundle, verify

    d = Path(a.bundle)
    probs = bundle.check(d)
    if probs:
        raise EdgeSparseError(f"bundle {d}: " + "; ".join(probs))
    meta = json.loads((d / "metadata.json").read_text())
    with np.load(d / "eval.npz") as z:
        x, y = z["x"], z["y"]
    mean, std = meta["input"]["mean"], meta["input"]["std"]
    bad = []
    for f, key, run in (("model.tflite", "tflite_int8", verify.run_tflite), ("model.onnx", "onnx_int8", verify.run_onnx)):
        acc = float((run(d / f, x, mean, std).argmax(1) == y).mean() * 100)
        ok = abs(acc - meta["accuracy"][key]) < 1e-6
        print(f"{f}: top-1 {acc:.2f}% on {len(y)} images (metadata says {meta['accuracy'][key]:.2f}%) {'ok' if ok else 'MISMATCH'}")
        bad += [] if ok else [f]
    if bad:
        raise EdgeSparseError(f"bundle {d}: {', '.join(bad)} no longer computes what the build measured")
    print(f"bundle {d}: manifest ok, accuracy reproduced")
    return 0


def cmd_study(a) -> int:
    from edge_sparse.study import check_attacks, check_eps_list, parse_seeds, run_study

    seeds = parse_seeds(a.seeds) if a.seeds is not None else [a.seed]
    attacks, eps = check_attacks(a.attacks.split(",")), check_eps_list(a.eps)
    run_study(a.target, _config(a), a.sparsity, Path(a.study_out), seeds=seeds, attacks=attacks, eps=eps,
              robust_n=2000 if a.robust_n is None else a.robust_n, steps=a.steps, cache_dir=a.cache)
    return 0


def _example(command: str, note: str = "") -> str:
    """A --help epilog: one command that works as written (tests/test_docs.py parses every one)."""
    return f"example:\n  {command}" + (f"    # {note}" if note else "")


def build_parser() -> argparse.ArgumentParser:
    """The `edge-sparse` parser with every subcommand (main uses it; tests parse documented commands with it)."""
    raw = argparse.RawDescriptionHelpFormatter  # keeps each epilog's example on its own line
    p = _Parser(prog="edge-sparse", description=__doc__.split("\n")[0], formatter_class=raw,
                epilog=_example("edge-sparse build --target rpi4 --quick", "a complete bundle in dist/rpi4/ in minutes"))
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_, example in (
            ("build", "the whole pipeline for one target", "edge-sparse build --target rpi4 --quick"),
            ("train", "dense training with the sparsity objective", "edge-sparse train --target rpi4"),
            ("prune", "train + budget-driven pruning and shrink", "edge-sparse prune --target rpi4"),
            ("export", "... + fine-tune, int8 export", "edge-sparse export --target rpi4"),
            ("report", "rebuild the bundle and its report from the cached stages", "edge-sparse report --target rpi4")):
        _build_args(sub.add_parser(name, help=help_, formatter_class=raw, epilog=_example(example)))
    s = sub.add_parser("study", help="sparsity sweep: accuracy, robustness, latency per sparsity", formatter_class=raw,
                       epilog=_example("edge-sparse study --target rpi4 --sparsity 0,0.3,0.5,0.7 --seeds 0,1,2"))
    _build_args(s)
    s.add_argument("--sparsity", type=_floats, required=True, help="e.g. 0,0.3,0.5,0.7,0.85")
    s.add_argument("--study-out", default="docs/study", help="where the table and plots go")
    s.add_argument("--seeds", help="seeds per sparsity point, e.g. 0,1,2 (default: --seed alone)")
    s.add_argument("--attacks", default="pgd,apgd-ce", help="pgd (ours, PGD-k random start) and/or apgd-ce (torchattacks)")
    s.add_argument("--eps", type=_floats, default=(2.0, 8.0), help="L-inf epsilons in pixel units /255, in (0, 255]")
    s.add_argument("--steps", type=int, default=10, help="attack iterations (default 10)")
    sub.add_parser("targets", help="list target profiles and budgets", formatter_class=raw,
                   epilog=_example("edge-sparse targets"))
    m = sub.add_parser("models", help="list registered architectures", formatter_class=raw,
                       epilog=_example("edge-sparse models --in-channels 3 --input-size 32", "sizes at CIFAR's 3x32x32"))
    m.add_argument("--in-channels", type=int, default=1)
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--input-size", type=int, default=28)
    c = sub.add_parser("calib", help="write a class-balanced int8 calibration slice of a train split", formatter_class=raw,
                       epilog=_example("edge-sparse calib --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --count 520"))
    c.add_argument("--dataset", default="fashion-mnist")
    c.add_argument("--data-dir")
    c.add_argument("--count", type=int, default=520)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--image-size", type=int, default=64)
    c.add_argument("--out", default="calib_data")
    from edge_sparse.latency import cli as latency_cli

    latency_cli.add_parsers(sub)
    v = sub.add_parser("verify", help="re-check a bundle: manifest sha256s and accuracy on eval.npz", formatter_class=raw,
                       epilog=_example("edge-sparse verify --bundle dist/rpi4"))
    v.add_argument("--bundle", required=True)
    bn = sub.add_parser("bench", help="run the bundle's bench.py on this host (flags after -- go to bench.py)",
                        formatter_class=raw, epilog=_example("edge-sparse bench --target rpi4 -- --runs 500 --json r.json"))
    bn.add_argument("--target", required=True)
    bn.add_argument("--out", default="dist")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter, before TF loads
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    p = build_parser()
    from edge_sparse._supervise import note_stage

    note_stage("")  # no stage yet (main may run more than once in a process: tests)
    try:
        a = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, its one line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        if a.command in ("build", "train", "prune", "export", "report"):
            return cmd_build(a)
        if a.command == "bench":
            return cmd_bench(a, rest)
        if a.command in ("profile", "calibrate", "latency"):
            from edge_sparse.latency import cli as latency_cli

            return latency_cli.dispatch(a)
        return {"targets": cmd_targets, "models": cmd_models, "calib": cmd_calib,
                "study": cmd_study, "verify": cmd_verify}[a.command](a)
    except EdgeSparseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyError as e:  # registry look-ups: unknown model / criterion
        if e.args and isinstance(e.args[0], str) and e.args[0].startswith("unknown"):
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
        print(unexpected_line(e, a), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are cached, re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- not a bad input we foresaw: one line, the traceback in a file
        print(unexpected_line(e, a), file=sys.stderr)
        return 1


def unexpected_line(e: BaseException, a: argparse.Namespace) -> str:
    """One line for an exception no check foresaw (a bug here or in a library, or a model's code that the stages
    cannot handle): its type and message, the innermost frame, the stage and model; the whole traceback goes to a
    file (printed here instead with EDGE_SPARSE_DEBUG=1)."""
    import tempfile
    import traceback

    from edge_sparse._supervise import current_stage

    tb = "".join(traceback.format_exception(e))
    if os.environ.get("EDGE_SPARSE_DEBUG"):
        print(tb, file=sys.stderr, end="")
    fd, path = tempfile.mkstemp(prefix="edge_sparse-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"edge-sparse {' '.join(sys.argv[1:])}\n{tb}")
    frames = traceback.extract_tb(e.__traceback__)
    at = f", at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    stage = current_stage()
    where = f"in the {stage!r} stage of `edge-sparse {a.command}`" if stage else f"in `edge-sparse {a.command}`"
    model = f" (model {a.model})" if getattr(a, "model", None) else ""
    msg = " ".join(str(e).split())[:300] or "(no message)"
    return (f"error: unexpected {type(e).__name__} {where}{model}: {msg}{at}; not an input check of ours, so likely a "
            f"bug (or an op our stages do not handle): traceback in {path}")


if __name__ == "__main__":
    raise SystemExit(main())
