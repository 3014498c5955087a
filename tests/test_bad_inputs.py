"""The bad-input catalogue: one table, every case a real bad input given to a real entry point.

Each row says which area it belongs to, how the bad input is made (files written under the test's temporary
directory), the command line (`edge-sparse ...`, `python -m benchmarks.compare ...`, or the bundle's own
`bench.py ...` run as a user runs it), the exit code and the words the one `error:` line must contain. Every case
also checks that nothing was half-written: the temporary tree is unchanged apart from an empty cache lock, no
bundle exists and no `*.tmp*` is left. `docs/bad-inputs.md` is this table rendered (`python tests/test_bad_inputs.py`
rewrites it; a test checks it is current).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad-inputs.md"
BUILD = ["build", "--target", "rpi4", "--quick", "--out", "{tmp}/dist", "--cache", "{tmp}/cache"]


@dataclass(frozen=True)
class Case:
    area: str
    name: str
    argv: list[str]  # placeholders: {tmp} (the case's directory), {bundle} (a copy of a QUICK bundle)
    words: str  # what the one error line must contain
    code: int = 2
    make: Optional[Callable[[Path], None]] = None  # writes the bad input under {tmp} (or edits {tmp}/bundle)
    tool: str = "edge-sparse"  # edge-sparse | compare | latency | bench.py
    env: dict = field(default_factory=dict)  # values may hold {tmp}


# --- makers: each writes one bad input -------------------------------------------------------------------------

def _profile(edit: Callable[[str], str], name: str = "rpi4") -> Callable[[Path], None]:
    """A copy of targets/ (made active by EDGE_SPARSE_TARGETS) whose rpi4.toml is edited, saved as `name`.toml."""
    def make(tmp: Path) -> None:
        shutil.copytree(ROOT / "targets", tmp / "targets")
        src = tmp / "targets" / "rpi4.toml"
        text = edit(src.read_text())
        if name != "rpi4":
            src.unlink()
        (tmp / "targets" / f"{name}.toml").write_text(text)
    return make


def _sub(pattern: str, repl: str) -> Callable[[str], str]:
    def edit(s: str) -> str:
        out = re.sub(pattern, repl, s, flags=re.M)
        assert out != s, pattern  # the edit must really change the profile
        return out
    return edit


PROFILE_ENV = {"EDGE_SPARSE_TARGETS": "{tmp}/targets"}


def _cifar(batches: dict, meta: bool = True) -> Callable[[Path], None]:
    """A python-format CIFAR-10 directory: `batches` maps file name -> the dict pickled into it (or raw bytes)."""
    def make(tmp: Path) -> None:
        d = tmp / "cifar"
        d.mkdir()
        for name, content in batches.items():
            (d / name).write_bytes(content if isinstance(content, bytes) else pickle.dumps(content, protocol=2))
        if meta:
            (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return make


def _batch(n: int = 8, labels=None, width: int = 3072) -> dict:
    rng = np.random.default_rng(0)
    return {b"data": rng.integers(0, 256, (n, width), dtype=np.uint8),
            b"labels": list(range(n)) if labels is None else labels}


def _all_batches(**kw) -> dict:
    return {name: _batch(**kw) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}


class _Touch:
    """A pickle that, if ever unpickled, creates {tmp}/ran: the catalogue checks it never appears."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _evil_cifar(tmp: Path) -> None:
    _cifar({**_all_batches(), "data_batch_1": pickle.dumps({b"data": _Touch(tmp / "ran")})})(tmp)


def _folder(with_images: bool) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / "folder" / "train" / "cat").mkdir(parents=True)
        (tmp / "folder" / "val").mkdir(parents=True)
        if with_images:
            (tmp / "folder" / "train" / "notes.txt").write_text("no class here")
    return make


def _fmnist_corrupt(tmp: Path) -> None:
    from edge_sparse import data

    d = tmp / "fmnist"
    d.mkdir()
    for f in data.FASHION_MNIST_FILES:
        shutil.copyfile(data.FASHION_MNIST_DIR / f, d / f)
    raw = gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:100] + bytes([(raw[100] + 1) % 10]) + raw[101:]))


NET = '''
import torch.nn as nn


def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def other():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def broken():
    raise RuntimeError("out of coffee")


def not_a_module():
    return 3


def rgb():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def five_classes():
    return make(num_classes=5)


class Gru(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.rnn = nn.GRU(8, 10, batch_first=True)

    def forward(self, x):
        y = self.conv(x).flatten(2).transpose(1, 2)
        return self.rnn(y)[0][:, -1]


def gru():
    return Gru()
'''


def _net(tmp: Path) -> None:
    (tmp / "net.py").write_text(NET)


def _weights(kind: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        import importlib.util

        import torch
        from safetensors.torch import save_file

        _net(tmp)
        spec = importlib.util.spec_from_file_location("catalogue_net", tmp / "net.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if kind == "other-arch":
            save_file(mod.other().state_dict(), str(tmp / "w.safetensors"))
        elif kind == "truncated":
            save_file(mod.make().state_dict(), str(tmp / "w.safetensors"))
            raw = (tmp / "w.safetensors").read_bytes()
            (tmp / "w.safetensors").write_bytes(raw[: len(raw) // 2])
        elif kind == "pickle-code":
            (tmp / "w.pt").write_bytes(pickle.dumps({"0.weight": _Touch(tmp / "ran")}))
        elif kind == "not-weights":
            torch.save({"epoch": 3, "note": "no tensors here"}, tmp / "w.pt")
    return make


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def _timings(tmp: Path) -> None:
    (tmp / "suite").mkdir()
    (tmp / "t.json").write_text(json.dumps({"probes": [], "emulated": True}))


# --- bundle edits (harness cases): a copy of a QUICK bundle whose manifest is then regenerated ------------------

def _npz(x, y) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _eval(b: Path):
    with np.load(b / "eval.npz") as d:
        return d["x"], d["y"]


def _eval_edit(fn) -> Callable[[Path], None]:
    def edit(tmp: Path) -> None:
        b = tmp / "bundle"
        (b / "eval.npz").write_bytes(fn(b))
        _rehash(b)
    return edit


def _meta_edit(fn) -> Callable[[Path], None]:
    def edit(tmp: Path) -> None:
        b = tmp / "bundle"
        meta = json.loads((b / "metadata.json").read_text())
        fn(meta)
        (b / "metadata.json").write_text(json.dumps(meta))
        _rehash(b)
    return edit


def _bundle_file(name: str, content: bytes | Callable[[Path], bytes], rehash: bool = True) -> Callable[[Path], None]:
    def edit(tmp: Path) -> None:
        b = tmp / "bundle"
        (b / name).write_bytes(content(b) if callable(content) else content)
        if rehash:
            _rehash(b)
    return edit


def _rehash(b: Path) -> None:
    """Damaged *before* it was hashed: the harness's checks after the sha256 must catch it."""
    from edge_sparse import bundle

    bundle.write_manifest(b)


def _flip_middle_byte(b: Path) -> bytes:
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _unlisted(tmp: Path) -> None:
    shutil.copyfile(tmp / "bundle" / "model.tflite", tmp / "bundle" / "other.tflite")


def _truncated_model(tmp: Path) -> None:
    b = tmp / "bundle"
    (b / "model.tflite").write_bytes((b / "model.tflite").read_bytes()[:2000])
    _rehash(b)


def _over_budget(tmp: Path) -> None:
    _meta_edit(lambda m: m["latency_ms"].update(budget=1e-6))(tmp)


# --- the table -------------------------------------------------------------------------------------------------

P = PROFILE_ENV
CASES = [
    # target profiles: a copy of targets/ with rpi4.toml edited, given to a build
    Case("profile", "unknown key", BUILD, "rpi4.toml: unknown key 'turbo'", make=_profile(lambda s: "turbo = true\n" + s), env=P),
    Case("profile", "missing key", BUILD, "missing key 'threads'", make=_profile(_sub(r"^threads = .*\n", "")), env=P),
    Case("profile", "wrong type", BUILD, "key 'threads' must be an integer, got str", make=_profile(_sub(r"^threads = .*$", 'threads = "four"')), env=P),
    Case("profile", "negative budget", BUILD, "latency_budget_ms", make=_profile(_sub(r"^latency_budget_ms = .*$", "latency_budget_ms = -1.0")), env=P),
    Case("profile", "zero threads", BUILD, "key 'threads' must be > 0, got 0", make=_profile(_sub(r"^threads = .*$", "threads = 0")), env=P),
    Case("profile", "more threads than cores", BUILD, "cores", make=_profile(_sub(r"^threads = .*$", "threads = 8")), env=P),
    Case("profile", "unknown runtime", BUILD, "runtime", make=_profile(_sub(r"^runtime = .*$", 'runtime = "coreml"')), env=P),
    Case("profile", "accuracy floor 120", BUILD, "accuracy_floor_pct", make=_profile(_sub(r"^accuracy_floor_pct = .*$", "accuracy_floor_pct = 120")), env=P),
    Case("profile", "zero ms/MMAC", BUILD, "key 'latency_model.ms_per_mmac' must be > 0", make=_profile(_sub(r"^ms_per_mmac = .*$", "ms_per_mmac = 0")), env=P),
    Case("profile", "unknown [latency_model] key", BUILD, "warp", make=_profile(lambda s: s.replace("[latency_model]", "[latency_model]\nwarp = 1")), env=P),
    Case("profile", "relative budget 1x", BUILD, "latency_budget", make=_profile(_sub(r"^latency_budget_ms = .*$", 'latency_budget = "1x"')), env=P),
    Case("profile", "not TOML", BUILD, "not valid TOML", make=_profile(lambda s: "name = \n" + s), env=P),
    Case("profile", "name differs from file", ["build", "--target", "rpi9", "--out", "{tmp}/dist", "--cache", "{tmp}/cache"],
         "must match", make=_profile(lambda s: s, name="rpi9"), env=P),
    Case("profile", "unknown target", ["build", "--target", "rpi9", "--out", "{tmp}/dist"], "android-arm64"),
    # data
    Case("data", "unknown dataset", BUILD + ["--dataset", "imagenet21k"], "unknown dataset 'imagenet21k'; valid:"),
    Case("data", "cifar10 without --data-dir", BUILD + ["--dataset", "cifar10"], "needs --data-dir"),
    Case("data", "missing --data-dir", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/none"], "{tmp}/none does not exist"),
    Case("data", "cifar10 batch missing", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "data_batch_1 is missing",
         make=_cifar({})),
    Case("data", "cifar10 batch of wrong width", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "data_batch_1",
         make=_cifar(_all_batches(width=1000))),
    Case("data", "cifar10 label out of range", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "outside 0..9",
         make=_cifar(_all_batches(labels=[0, 1, 2, 3, 4, 5, 6, 12]))),
    Case("data", "cifar10 batch not a pickle", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "not a readable CIFAR batch",
         make=_cifar({**_all_batches(), "data_batch_1": b"\x00garbage"})),
    Case("data", "cifar10 pickle carrying code", BUILD + ["--dataset", "cifar10", "--data-dir", "{tmp}/cifar"], "data_batch_1",
         make=_evil_cifar),
    Case("data", "image folder without classes", BUILD + ["--dataset", "folder", "--data-dir", "{tmp}/folder"], "no class sub-directories",
         make=lambda tmp: (tmp / "folder" / "train").mkdir(parents=True)),
    Case("data", "image folder without images", BUILD + ["--dataset", "folder", "--data-dir", "{tmp}/folder"], "holds no images",
         make=_folder(with_images=True)),
    Case("data", "Fashion-MNIST copy with a changed label", BUILD, "sha256", make=_fmnist_corrupt,
         env={"EDGE_SPARSE_DATA": "{tmp}/fmnist"}),
    Case("data", "calib --count 0", ["calib", "--count", "0", "--out", "{tmp}/calib"], "--count must be >= 1, got 0"),
    # models: a user factory file (--model FILE:FUNC)
    Case("model", "registered name unknown", BUILD + ["--model", "resnet9000"], "resnet9000"),
    Case("model", "factory file missing", BUILD + ["--model", "{tmp}/nope.py:make"], "{tmp}/nope.py"),
    Case("model", "factory missing in file", BUILD + ["--model", "{tmp}/net.py:nothing"], "has no callable 'nothing'", make=_net),
    Case("model", "factory file does not import", BUILD + ["--model", "{tmp}/syntax.py:make"], "raised SyntaxError",
         make=_file("syntax.py", "def make(:\n")),
    Case("model", "factory raises", BUILD + ["--model", "{tmp}/net.py:broken"], "RuntimeError: out of coffee", make=_net),
    Case("model", "factory returns no nn.Module", BUILD + ["--model", "{tmp}/net.py:not_a_module"], "returned int, not a torch.nn.Module",
         make=_net),
    Case("model", "first conv vs data channels", BUILD + ["--model", "{tmp}/net.py:rgb"], "first conv takes 3 input channels, but the data has 1",
         make=_net),
    Case("model", "last layer vs data classes", BUILD + ["--model", "{tmp}/net.py:five_classes"], "the last layer must have 10 outputs",
         make=_net),
    Case("model", "an op the exporters cannot take", BUILD + ["--model", "{tmp}/net.py:gru"], "no latency class for it", make=_net),
    # checkpoints / weights
    Case("weights", "file missing", BUILD + ["--weights", "{tmp}/none.safetensors"], "--weights {tmp}/none.safetensors: no such file"),
    Case("weights", "another architecture", BUILD + ["--model", "{tmp}/net.py:make", "--weights", "{tmp}/w.safetensors"],
         "shape", make=_weights("other-arch")),
    Case("weights", "truncated safetensors", BUILD + ["--model", "{tmp}/net.py:make", "--weights", "{tmp}/w.safetensors"],
         "w.safetensors", make=_weights("truncated")),
    Case("weights", "pickle that is not weights-only", BUILD + ["--model", "{tmp}/net.py:make", "--weights", "{tmp}/w.pt"],
         "refused, not run", make=_weights("pickle-code")),
    Case("weights", "checkpoint without tensors", BUILD + ["--model", "{tmp}/net.py:make", "--weights", "{tmp}/w.pt"],
         "w.pt", make=_weights("not-weights")),
    Case("weights", "--no-train without --weights", BUILD + ["--no-train"], "--no-train needs --weights"),
    # cache and output directories
    Case("cache", "--cache is a file", ["build", "--target", "rpi4", "--quick", "--out", "{tmp}/dist", "--cache", "{tmp}/afile"],
         "--cache {tmp}/afile: exists and is not a directory", make=_file("afile")),
    Case("cache", "--out is a file", ["build", "--target", "rpi4", "--quick", "--out", "{tmp}/afile", "--cache", "{tmp}/cache"],
         "--out {tmp}/afile: exists and is not a directory", make=_file("afile")),
    Case("cache", "--from a stage that does not exist", BUILD + ["--from", "polish"], "argument --from: invalid choice: 'polish'"),
    # build flags
    *[Case("build flag", " ".join(f), BUILD + f, w) for f, w in [
        (["--seed", "-1"], "--seed must be in [0, 2**32)"),
        (["--image-size", "0"], "--image-size must be between 8 and 1024"),
        (["--sparsities", ","], "--sparsities: no numbers given"),
        (["--sparsities", "0.3,1.2"], "--sparsities: 1.2 is outside [0, 1)"),
        (["--epochs", "-2"], "--epochs must be >= 0"),
        (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
        (["--finetune-lr", "-0.1"], "--finetune-lr must be a finite number >= 0"),
        (["--finetune-lr", "inf"], "--finetune-lr must be a finite number >= 0"),
        (["--sparsity-lambda", "nan"], "--sparsity-lambda must be a finite number >= 0"),
        (["--kd-alpha", "1.5"], "--kd-alpha must be in [0, 1]"),
        (["--lr", "0"], "lr must be > 0, got 0.0"),
        (["--lr", "-1"], "--lr must be a finite number >= 0"),
        (["--kd-temperature", "0"], "kd_temperature must be > 0, got 0.0"),
        (["--kd-temperature", "nan"], "--kd-temperature must be a finite number >= 0"),
        (["--prune-steps", "0"], "prune_steps must be >= 1"),
        (["--criterion", "entropy"], "entropy"),
    ]],
    # the other commands' flags
    Case("study flag", "--sparsity 0,1.5", ["study", "--target", "rpi4", "--quick", "--sparsity", "0,1.5", "--out", "{tmp}/dist",
                                            "--cache", "{tmp}/cache", "--study-out", "{tmp}/study"], "1.5"),
    *[Case("study flag", " ".join(extra), ["study", "--target", "rpi4", "--quick", "--sparsity", "0,0.5", *extra, "--out",
                                          "{tmp}/dist", "--cache", "{tmp}/cache", "--study-out", "{tmp}/study"], words)
      for extra, words in [
          (["--seeds", "0,one"], "--seeds: 'one' is not a seed"),
          (["--attacks", "pgd,cw"], "unknown attack 'cw'; valid: pgd, apgd-ce"),
          (["--eps", "0"], "--eps 0 is outside (0, 255]"),
          (["--eps", "300"], "--eps 300 is outside (0, 255]"),
          (["--sparsity", "0.3,0.5"], "--sparsity must include 0"),
      ]],
    Case("build flag", "--accuracy-floor 150", [*BUILD, "--accuracy-floor", "150"], "--accuracy-floor must be a percentage"),
    Case("latency flag", "check an unknown target", ["latency", "check", "--target", "rpi9"], "rpi9"),
    Case("latency flag", "check a device target without reference", ["latency", "check", "--target", "rpi4"],
         "only a target measured on this host"),
    Case("latency flag", "check a target with no reference data", ["latency", "check", "--target", "rpi5", "--reference", "nb201"],
         "rpi4"),
    Case("latency flag", "--folds 1", ["latency", "check", "--target", "rpi4", "--reference", "nb201", "--folds", "1"], "--folds >= 2"),
    Case("latency flag", "profile without a target", ["profile"], "which target?"),
    Case("latency flag", "profile --num-classes 1", ["profile", "--target", "rpi4", "--num-classes", "1"], "--num-classes must be >= 2"),
    Case("latency flag", "profile --timings missing", ["profile", "--target", "rpi4", "--timings", "{tmp}/none.json", "--suite", "{tmp}"],
         "{tmp}/none.json: no such probe timings"),
    Case("latency flag", "calibrate from emulated timings", ["calibrate", "--target", "rpi4", "--timings", "{tmp}/t.json", "--suite",
                                                             "{tmp}/suite"], "emulat", make=_timings),
    Case("bundle", "verify a missing bundle", ["verify", "--bundle", "{tmp}/none"], "{tmp}/none"),
    Case("bundle", "bench without a bundle", ["bench", "--target", "rpi4", "--out", "{tmp}"], "no bundle at"),
    Case("compare flag", "--methods shipped,magic", ["--methods", "shipped,magic"], "valid: shipped, global, width, width-time, tp, dense", tool="compare"),
    Case("compare flag", "--budgets host:1x", ["--budgets", "host:1x"], "<target>:<k>x with k > 1", tool="compare"),
    Case("compare flag", "--budgets pi9", ["--budgets", "pi9"], "not a target; valid:", tool="compare"),
    Case("compare flag", "--seeds 0,x", ["--seeds", "0,x"], "expected comma-separated integers", tool="compare"),
    Case("compare flag", "--model resnet9", ["--model", "resnet9"], "not a registered architecture; valid:", tool="compare"),
    Case("latency benchmark flag", "--parts fil", ["--parts", "fil"], "unknown fil; valid: predictor, fill, speedup", tool="latency"),
    Case("latency benchmark flag", "--parts ,", ["--parts", ","], "unknown (none given)", tool="latency"),
    # the bundle's harness, run as on the device: a damaged bundle or a bad flag
    *[Case("harness", n, a, w, make=m, tool="bench.py") for n, a, w, m in [
        ("labels of shape (N, 1)", [], "y must be one integer label per image", _eval_edit(lambda b: _npz(_eval(b)[0], _eval(b)[1][:, None]))),
        ("labels out of range", [], "labels must lie in [0, 10)", _eval_edit(lambda b: _npz(_eval(b)[0], _eval(b)[1] + 10))),
        ("float images", [], "x must be uint8 images of shape (N, 28, 28, 1)",
         _eval_edit(lambda b: _npz(_eval(b)[0].astype(np.float32), _eval(b)[1]))),
        ("images of another size", [], "x must be uint8 images of shape (N, 28, 28, 1)", _eval_edit(lambda b: _npz(_eval(b)[0][:, :20], _eval(b)[1]))),
        ("eval.npz garbage", [], "eval.npz: unreadable", _bundle_file("eval.npz", b"not a zip")),
        ("eval.npz without y", [], "expected arrays x (uint8 NHWC) and y",
         _eval_edit(lambda b: _npz(*_eval(b)).replace(b"y.npy", b"z.npy"))),
        ("metadata without input.mean", [], "field input.mean", _meta_edit(lambda m: m["input"].pop("mean"))),
        ("metadata threads a string", [], "field threads must be an integer", _meta_edit(lambda m: m.update(threads="4"))),
        ("metadata budget a string", [], "field latency_ms.budget", _meta_edit(lambda m: m["latency_ms"].update(budget="0.7"))),
        ("metadata without budget", [], "latency_ms.budget", _meta_edit(lambda m: m["latency_ms"].pop("budget"))),
        ("metadata std zero", [], "field input.std must be positive", _meta_edit(lambda m: m["input"].update(std=[0.0]))),
        ("metadata not JSON", [], "metadata.json is not valid JSON", _bundle_file("metadata.json", b"{")),
        ("metadata a list", [], "must be a JSON object", _bundle_file("metadata.json", b"[]")),
        ("metadata edited, manifest not", [], "metadata.json: sha256", _bundle_file("metadata.json", lambda b: (b / "metadata.json").read_bytes() + b" ", rehash=False)),
        ("model tampered", [], "model.tflite: sha256", _bundle_file("model.tflite", _flip_middle_byte, rehash=False)),
        ("model zeros, manifest matching", [], "not a TFLite flatbuffer", _bundle_file("model.tflite", bytes(4096))),
        ("model truncated, manifest matching", [], "truncated", _truncated_model),
        ("model not listed", ["--model", "other.tflite"], "not listed in", _unlisted),
        ("model of another format", ["--model", "report.md"], "runs .tflite or .onnx models", None),
        ("runtime for another format", ["--runtime", "onnxruntime", "--model", "model.tflite"], "runs .onnx", None),
        ("unknown runtime", ["--runtime", "coreml"], "unknown --runtime", None),
        ("--threads 0", ["--threads", "0"], "--threads must be >= 1", None),
        ("--runs 0", ["--runs", "0"], "--runs must be >= 1", None),
        ("--rounds 0", ["--rounds", "0"], "--rounds must be >= 1", None),
        ("--eval-limit -1", ["--eval-limit", "-1"], "--eval-limit must be >= 0", None),
        ("--json into a missing directory", ["--json", "{tmp}/nope/r.json"], "does not exist", None),
        ("--json a directory", ["--json", "{tmp}"], "is a directory", None),
        ("--dump-outputs into a missing directory", ["--dump-outputs", "{tmp}/nope/o.npy"], "--dump-outputs", None),
        ("--probes not a directory", ["--probes", "{tmp}/none"], "not a directory", None),
        ("--probes without a suite", ["--probes", "{tmp}"], "probes.json is missing", None),
    ]],
]


def _ids(c: Case) -> str:
    return f"{c.area}: {c.name}"


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _fill(s: str, tmp: Path) -> str:
    return s.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.tool == "bench.py" else c for c in CASES],
                         ids=[_ids(c) for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys, request):
    """Exit code, one `error:` line naming the thing, no traceback, nothing half-written."""
    tmp = tmp_path / "case"
    tmp.mkdir()
    if case.tool == "bench.py":
        shutil.copytree(request.getfixturevalue("quick")["bundle"], tmp / "bundle")
        _meta_edit(lambda m: m["latency_ms"].update(budget=1e3))(tmp)  # never "over budget" on a loaded host
    if case.make:
        case.make(tmp)
    for k, v in case.env.items():
        monkeypatch.setenv(k, _fill(v, tmp))
    argv = [_fill(a, tmp) for a in case.argv]
    before = _tree(tmp)
    if case.tool == "bench.py":
        r = subprocess.run([sys.executable, "bench.py", "--runs", "20", "--warmup-runs", "2", *argv], cwd=tmp / "bundle",
                           capture_output=True, text=True, timeout=240)
        code, err, out = r.returncode, r.stderr, r.stdout
        assert "runs" not in out, out  # refused before the timing run
    else:
        from edge_sparse.cli import main

        if case.tool == "compare":
            from benchmarks import compare

            code = compare.main(argv)
        elif case.tool == "latency":
            from benchmarks import latency

            code = latency.main(argv)
        else:
            code = main(argv)
        cap = capsys.readouterr()
        err, out = cap.err, cap.out
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("edge_sparse build:", "warning:"))]
    assert code == case.code, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _fill(case.words, tmp) in lines[0], lines[0]
    assert "Traceback" not in err + out
    after = _tree(tmp)
    lock = [k for k in after if k not in before]
    assert all(k.endswith(".lock") and (tmp / k).stat().st_size == 0 for k in lock), lock  # only an empty lock file
    assert {k: v for k, v in after.items() if k in before} == before  # the bad input itself was not touched
    assert not (tmp / "dist").exists() and not list(tmp.rglob("*.tmp*")) and not (tmp / "ran").exists()


# --- docs/bad-inputs.md is this table --------------------------------------------------------------------------

def render() -> str:
    head = ("# Bad inputs and what they get\n\n"
            "Every row is a case of `tests/test_bad_inputs.py::test_bad_input` (`make test`; this page is that table, "
            "rendered by\n`python tests/test_bad_inputs.py`). Each asserts the exit code, exactly one `error:` line "
            "containing the words shown,\nno traceback, and that nothing was half-written: the bad input untouched, no "
            "bundle, no `*.tmp*`, at most an empty\ncache lock. Exit 2 = bad input; `bench.py` also has 1 = over budget "
            "and 3 = internal error, and a runtime that\ncrashes on a damaged model crashes in a child process, never "
            "the harness. `edge-sparse` itself: 3 = no candidate fits the budget, or the process died by a signal (one "
            "line naming\nthe stage), 4 = a failed gate, 1 = an exception no check foresaw (one line naming type, "
            "stage, model and frame;\nthe traceback goes to a file the line names). DIR is the case's temporary "
            "directory; build cases also pass\n`--quick --out DIR/dist --cache DIR/cache`.\n\n")
    rows = ["| area | case | command | exit | the error line contains |", "|---|---|---|---:|---|"]
    for c in CASES:
        cmd = {"edge-sparse": "edge-sparse", "compare": "python -m benchmarks.compare", "bench.py": "python bench.py",
               "latency": "python -m benchmarks.latency"}[c.tool]
        shown = c.argv[len(BUILD):] if c.argv[:len(BUILD)] == BUILD else c.argv
        shown = (["build", "--target", "rpi4"] if shown is not c.argv else []) + shown
        text = f"{cmd} {' '.join(shown)}".replace("|", "\\|").replace("{tmp}", "DIR")
        rows.append(f"| {c.area} | {c.name} | `{text}` | {c.code} | {c.words.replace('{tmp}', 'DIR').replace('|', chr(92) + '|')} |")
    tail = "\n\nCount: %d cases in one table-driven test (`tests/test_bad_inputs.py::test_bad_input`).\n" % len(CASES)
    return head + "\n".join(rows) + tail


def test_doc_lists_every_case():
    assert len(CASES) >= 60 and len({_ids(c) for c in CASES}) == len(CASES)
    assert DOC.read_text() == render(), "docs/bad-inputs.md is stale: run `python tests/test_bad_inputs.py`"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    DOC.write_text(render())
    print(f"{DOC}: {len(CASES)} cases")
