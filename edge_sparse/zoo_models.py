"""The classifiers people deploy, from torchvision and timm, built on the pinned CPU torch.

In:  one of `ZOO_MODELS`' names and a class count.
Out: an `nn.Module` in eval mode with random weights (nothing is downloaded).
Run: `make zoo-deps` once (installs torchvision and timm into build/zoo-libs, not into the venv), then
     `.venv/bin/python -m edge_sparse.zoo_models` builds all of them and runs a 1x3x96x96 forward each.

torchvision's PyPI wheel is compiled against CUDA torch: its `_C` extension does not load beside
torch==2.13.0+cpu. torchvision tolerates that (`extension._has_ops()` is then False and
`_autograd_registrations` is skipped) except for `_meta_registrations`, which registers fake kernels
for `torchvision::nms`/`qnms` unconditionally and raises "operator torchvision::nms does not exist".
Those are detection ops no classifier uses, so an empty stand-in module takes its place; the model
code is plain Python and runs as is. timm imports torchvision, so it needs the same.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Literal

import torch.nn as nn

from edge_sparse.errors import EdgeSparseError

ZOO_LIBS = Path(__file__).resolve().parent.parent / "build" / "zoo-libs"  # where `make zoo-deps` installs

Source = Literal["torchvision", "timm"]
ZOO_MODELS: dict[str, Source] = {
    "resnet18": "torchvision", "mobilenet_v2": "torchvision", "mnasnet0_5": "torchvision",
    "mobilenet_v3_small": "torchvision", "efficientnet_b0": "torchvision", "shufflenet_v2_x0_5": "torchvision",
    "squeezenet1_1": "torchvision", "densenet121": "torchvision", "regnet_x_400mf": "torchvision",
    "convnext_tiny": "torchvision",
    "efficientnet_lite0": "timm", "mobilenetv3_small_100": "timm", "lcnet_050": "timm",
    "mobilenetv4_conv_small": "timm", "tinynet_e": "timm", "fastvit_t8": "timm", "repvit_m0_9": "timm",
    "ghostnet_100": "timm", "mobilevit_xxs": "timm", "efficientvit_b0": "timm",
}


def _import_zoo_libs() -> None:
    """Put build/zoo-libs on sys.path and import torchvision without its compiled ops."""
    if "torchvision" in sys.modules:
        return
    if not (ZOO_LIBS / "torchvision" / "__init__.py").is_file() or not (ZOO_LIBS / "timm" / "__init__.py").is_file():
        raise EdgeSparseError(f"torchvision/timm are not installed in {ZOO_LIBS}: run 'make zoo-deps' first")
    if str(ZOO_LIBS) not in sys.path:
        sys.path.insert(0, str(ZOO_LIBS))
    # the only import-time use of the missing ops: fake-kernel registration for nms/qnms (see docstring)
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision  # noqa: F401


def load_zoo_model(name: str, num_classes: int) -> nn.Module:
    """`name` from `ZOO_MODELS`, untrained, with a `num_classes`-way head, in eval mode."""
    if name not in ZOO_MODELS:
        raise EdgeSparseError(f"unknown zoo model {name!r}; valid: {', '.join(ZOO_MODELS)}")
    if num_classes < 1:
        raise EdgeSparseError(f"num_classes must be >= 1, got {num_classes}")
    _import_zoo_libs()
    if ZOO_MODELS[name] == "torchvision":
        import torchvision.models

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Each named model (default: all) in its own subprocess: build it, run a 1x3x96x96 forward."""
    import argparse
    import subprocess

    ap = argparse.ArgumentParser(prog="python -m edge_sparse.zoo_models", description=main.__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"zoo models to check (default: all): {', '.join(ZOO_MODELS)}")
    names = ap.parse_args(argv).names or list(ZOO_MODELS)
    bad = [n for n in names if n not in ZOO_MODELS]
    if bad:
        ap.error(f"unknown zoo model {bad[0]!r}; valid: {', '.join(ZOO_MODELS)}")
    code = ("import sys, torch; from edge_sparse.zoo_models import load_zoo_model; "
            "m = load_zoo_model(sys.argv[1], 10); y = m(torch.rand(1, 3, 96, 96)); "
            "assert tuple(y.shape) == (1, 10), y.shape; "
            "print(f'{sys.argv[1]}: ok, {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M params')")
    failed = []
    for name in names:
        r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=600)
        lines = (r.stdout + r.stderr).strip().splitlines()
        print(lines[-1] if r.returncode == 0 else f"{name}: FAILED: {lines[-1] if lines else r.returncode}",
              flush=True)
        if r.returncode:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
