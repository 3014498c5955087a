"""Your own model: a factory in a file outside the package, your weights, a bundle out — and every bad input
(missing file, raising factory, wrong return, foreign weights, pickled code, shape mismatches) one clear line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from edge_sparse.errors import EdgeSparseError

ROOT = Path(__file__).resolve().parent.parent

USER_FILE = '''
import torch
import torch.nn as nn


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2Style(nn.Module):
    """MobileNetV2's layout (inverted residuals, depthwise convs, ReLU6), narrow, for 3x96x96 images."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 4),
                                    InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 4),
                                    InvertedResidual(32, 32, 1, 4))
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.b2(self.c2(self.relu(self.b1(self.c1(x)))))
        return self.relu(out + (x if self.down is None else self.down(x)))


class ResNet18Style(nn.Module):
    """ResNet-18's layout (4 stages of 2 basic blocks), narrow, for 3x64x64 images."""

    def __init__(self, num_classes=3, widths=(16, 32, 48, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [Basic(cin, w, 1 if i == 0 else 2), Basic(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def mobilenet():
    torch.manual_seed(0)
    return MobileNetV2Style()


def resnet18():
    torch.manual_seed(0)
    return ResNet18Style()


def four_classes():
    return MobileNetV2Style(num_classes=4)


def broken():
    raise RuntimeError("out of coffee")


def not_a_module():
    return 42


def grey_input():
    m = MobileNetV2Style()
    m.stem[0] = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
    return m
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's project outside the package: net.py, trained-ish weights, an image folder of real images."""
    d = tmp_path_factory.mktemp("user")
    (d / "net.py").write_text(USER_FILE)
    from edge_sparse import data, usermodel

    fm = data.load("fashion-mnist", seed=0, limit_train=600, limit_eval=60)
    from PIL import Image

    classes = {0: "tshirt", 1: "trouser", 7: "sneaker"}
    for split, s, n in (("train", fm.train, 60), ("val", fm.test, 15)):
        for label, name in classes.items():
            (d / "images" / split / name).mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(s.y == label)[:n]
            for i in idx:  # real Fashion-MNIST pictures, as RGB photos a user might have
                img = Image.fromarray(s.images([i])[0][:, :, 0]).convert("RGB").resize((96, 96))
                img.save(d / "images" / split / name / f"{i}.png")
    from safetensors.torch import save_file

    for name in ("mobilenet", "resnet18"):
        m = usermodel.instantiate(f"{d / 'net.py'}:{name}")
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / f"{name}.safetensors"))
    return d


def _cli(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "edge_sparse", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _targets(tmp_path) -> Path:
    """rpi4 with a budget relative to the dense model (1.5x faster), so any architecture has one to meet."""
    t = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", t)
    p = t / "rpi4.toml"
    p.write_text(p.read_text().replace("latency_budget_ms = 1.00", 'latency_budget = "1.5x"')
                 .replace("model_size_budget_kb = 96", "model_size_budget_kb = 4096"))
    return t


@pytest.mark.slow
@pytest.mark.parametrize("factory,size", [("mobilenet", 96), ("resnet18", 64)])
def test_your_model_no_train_to_a_bundle(user, tmp_path, monkeypatch, factory, size):
    monkeypatch.setenv("EDGE_SPARSE_TARGETS", str(_targets(tmp_path)))
    t0 = time.time()
    r = _cli("build", "--target", "rpi4", "--model", f"{user / 'net.py'}:{factory}", "--weights",
             str(user / f"{factory}.safetensors"), "--no-train", "--dataset", "folder", "--data-dir",
             str(user / "images"), "--input-size", str(size), "--quick", "--out", str(tmp_path / "dist"),
             "--cache", str(tmp_path / "cache"))
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    b = tmp_path / "dist" / "rpi4"
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["input"]["shape"] == [1, size, size, 3] and meta["labels"] == ["sneaker", "trouser", "tshirt"]
    assert meta["model"]["macs"] < meta["dense"]["macs"] and meta["sparsity"] > 0  # channels really removed
    assert meta["latency_ms"]["predicted_p90"] <= meta["latency_ms"]["budget"]
    assert "given" in meta["dense"]["reference"] or "you gave" in meta["dense"]["reference"]
    stage = json.loads(next((tmp_path / "cache").glob("export-*/stage.json")).read_text())
    assert not stage["tflite_lint"].get("problems"), stage["tflite_lint"]
    assert meta["accuracy"]["test"]["int8_agreement_pct"] >= 80  # random-init weights: int8 follows fp32 mostly
    assert "--no-train" in (b / "report.md").read_text()
    print(f"{factory} --no-train bundle in {wall:.0f} s")


def test_factory_and_weights_bad_inputs(user, tmp_path):
    from edge_sparse import usermodel

    net = user / "net.py"
    with pytest.raises(EdgeSparseError, match="no such file"):
        usermodel.instantiate(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(EdgeSparseError, match="the factory raised RuntimeError: out of coffee"):
        usermodel.instantiate(f"{net}:broken")
    with pytest.raises(EdgeSparseError, match="returned int, not a torch.nn.Module"):
        usermodel.instantiate(f"{net}:not_a_module")
    with pytest.raises(EdgeSparseError, match="has no callable 'nothing'"):
        usermodel.instantiate(f"{net}:nothing")
    bad = tmp_path / "syntax.py"
    bad.write_text("def make(:\n")
    with pytest.raises(EdgeSparseError, match=f"importing {bad} raised SyntaxError"):
        usermodel.instantiate(f"{bad}:make")
    m = usermodel.instantiate(f"{net}:mobilenet")
    with pytest.raises(EdgeSparseError, match=r"'stem.0.weight'.*shape \(16, 3, 3, 3\).*\(16, 3, 3, 3\)|has no tensor"):
        usermodel.load_weights(m, user / "resnet18.safetensors")
    with pytest.raises(EdgeSparseError, match="3 classes: the last layer must have 3 outputs"):
        usermodel.check_io(usermodel.instantiate(f"{net}:four_classes"), (3, 96, 96), 3, "--model x")
    with pytest.raises(EdgeSparseError, match="first conv takes 1 input channels, but the data has 3"):
        usermodel.check_io(usermodel.instantiate(f"{net}:grey_input"), (3, 96, 96), 3, "--model x")


def test_pickled_code_is_refused_not_run(user, tmp_path):
    from edge_sparse import usermodel

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_pickle_that_touches(marker))
    m = usermodel.instantiate(f"{user / 'net.py'}:mobilenet")
    with pytest.raises(EdgeSparseError, match="not a weights-only checkpoint.*refused, not run"):
        usermodel.load_weights(m, evil)
    assert not marker.exists()
    torch.save(m.state_dict(), tmp_path / "ok.pt")  # a plain state dict checkpoint loads
    usermodel.load_weights(usermodel.instantiate(f"{user / 'net.py'}:mobilenet"), tmp_path / "ok.pt")


def _pickle_that_touches(path: Path) -> bytes:
    import pickle

    class Touch:
        def __reduce__(self):
            return (Path.touch, (path,))

    return pickle.dumps({"w": Touch()})


def test_cli_bad_model_inputs_are_one_line_before_any_work(user, tmp_path):
    r = _cli("build", "--target", "rpi4", "--model", f"{tmp_path / 'missing.py'}:make", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --model") and "no such file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli("build", "--target", "rpi4", "--model", f"{user / 'net.py'}:mobilenet", "--no-train", timeout=120)
    assert r.returncode == 2 and "--no-train needs --weights" in r.stderr
    r = _cli("build", "--target", "rpi4", "--model", f"{user / 'net.py'}:mobilenet", "--weights",
             str(tmp_path / "none.safetensors"), timeout=120)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_es_export_of_a_model_pruned_by_hand(user, tmp_path):
    import edge_sparse as es
    from edge_sparse import usermodel

    m = usermodel.instantiate(f"{user / 'net.py'}:resnet18").eval()
    ex = torch.zeros(1, 3, 64, 64)
    res = es.prune(m, ex, sparsity=0.5, round_to=8)
    calib = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3)).astype(np.uint8)
    art = es.export(res.model, ex, calib=calib, out=tmp_path / "out", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert art["tflite"].is_file() and art["onnx"].is_file()
    assert set(art["parity"]) == {"model.onnx", "model.tflite", "model_fp32.tflite"}
    assert art["parity"]["model_fp32.tflite"]["agreement"] >= 99.0
    with pytest.raises(EdgeSparseError, match="calib must be uint8 NHWC"):
        es.export(res.model, ex, calib=calib.astype(np.float32), out=tmp_path / "o2")


def test_weights_with_another_head_load_the_rest_and_name_the_head(tmp_path):
    """An ImageNet-style checkpoint (1000 classes) for a 10-class model: every other tensor loads, the head keeps the
    model's own init, and the note names it; a mismatch anywhere else is still an error."""
    from safetensors.torch import save_file

    from edge_sparse import models
    from edge_sparse.usermodel import load_weights_noting

    src = models.create("tiny_mbv3", in_channels=3, num_classes=1000, input_size=32)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "in1k.safetensors"))
    dst = models.create("tiny_mbv3", in_channels=3, num_classes=10, input_size=32)
    head = dst.classifier.weight.detach().clone()
    notes = load_weights_noting(dst, tmp_path / "in1k.safetensors")
    assert len(notes) == 1 and "classifier.weight" in notes[0] and "[1000, 32]" in notes[0] and "[10, 32]" in notes[0]
    assert torch.equal(dst.features[1].block[0].weight, src.features[1].block[0].weight)
    assert torch.equal(dst.classifier.weight, head)
    other = models.create("tiny_effnet", in_channels=3, num_classes=10, input_size=32)
    with pytest.raises(EdgeSparseError, match="in1k.safetensors"):
        load_weights_noting(other, tmp_path / "in1k.safetensors")


def test_state_dict_metadata_round_trips_for_custom_loaders(tmp_path):
    """torchvision's MNASNet reads its version from the state dict's metadata in `_load_from_state_dict`; the stage
    cache (safetensors) and the train checkpoint must hand it over, not a bare dict."""
    from edge_sparse import models
    from edge_sparse.train import load_checkpoint, save_checkpoint

    class Versioned(nn.Module):
        _version = 2

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 10, 1)

        def forward(self, x):
            return self.c(x).mean((2, 3))

        def _load_from_state_dict(self, sd, prefix, meta, *a):
            if meta.get("version") not in (1, 2):
                raise ValueError(f"version should be set to 1 or 2 instead of {meta.get('version')}")
            super()._load_from_state_dict(sd, prefix, meta, *a)

    m = Versioned()
    bare = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="version"):
        Versioned().load_state_dict(bare)  # what dropped metadata does
    fresh = Versioned()
    models.load_state(fresh, bare)
    assert torch.equal(fresh.c.weight, m.c.weight)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "last.pt", m, opt, 1, [])
    load_checkpoint(tmp_path / "last.pt", Versioned())
