"""Registered architectures: CIFAR-style ResNets, MobileNetV2/V3-style nets, a VGG-style net, and tiny nets with
the blocks mobile classifiers are made of (SE, hard-swish, SiLU, concat + channel shuffle, grouped convs).

In:  a registered name plus `in_channels`, `num_classes`, `input_size`.
Out: a plain `nn.Module` (no masks, no hooks) whose convs are followed by BatchNorm, so the
     network-slimming objective (L1 on BN scales) and Torch-Pruning's graph both apply.
Run: `edge-sparse models` lists them with params and MACs at the default input.

Every model can also be rebuilt from an *architecture spec* (`arch_spec`/`build_from_spec`): the
registered name, its kwargs, and per-layer channel counts after pruning, so a shrunk model is saved as
JSON + safetensors and rebuilt without unpickling code.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_sparse.registry import Registry

MODELS: Registry = Registry("model")


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, k=1, stride=stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. for small images: three stages of `n` basic blocks."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3,
                 num_classes: int = 10, input_size: int = 32):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Small(nn.Module):
    """MobileNetV2 layout (depthwise convs, inverted residuals) scaled for small inputs."""

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3, num_classes: int = 10,
                 input_size: int = 32, cfg: Sequence[Sequence[int]] = ((1, 16, 1, 1), (6, 24, 2, 1),
                 (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)), last: int = 256):
        super().__init__()
        c = lambda v: max(8, int(round(v * width_mult / 8)) * 8)  # noqa: E731
        cin = c(32)
        feats: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False),
                                                nn.BatchNorm2d(cin), nn.ReLU6(inplace=True))]
        for t, ch, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        feats.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGGSmall(nn.Module):
    """VGG-style plain conv stack (conv-BN-ReLU, max-pool between stages), as in network slimming."""

    def __init__(self, cfg: Sequence[int | str] = (32, 32, "M", 64, 64, "M", 128, 128), in_channels: int = 3,
                 num_classes: int = 10, input_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, 1, 1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as MobileNetV3 uses it: global pool -> 1x1 reduce -> ReLU -> 1x1
    expand -> gate (hard-sigmoid, or sigmoid as in EfficientNet) -> channel-wise multiply."""

    def __init__(self, c: int, reduced: int, gate: type[nn.Module] = nn.Hardsigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(c, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, c, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class MBConv(nn.Module):
    """MobileNetV3 / EfficientNet inverted residual: 1x1 expand, kxk depthwise, optional SE, 1x1 project."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool, act: type[nn.Module],
                 gate: type[nn.Module] = nn.Hardsigmoid):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(SqueezeExcite(exp, max(8, exp // 4), gate))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small's block pattern (Howard et al. 2019: hard-swish, SE with hard-sigmoid, ReLU in the early
    blocks) at widths and strides for 28-64 px inputs. `act=nn.SiLU, gate=nn.Sigmoid` gives EfficientNet's blocks."""

    # (kernel, expansion, out, SE, hard-swish, stride)
    CFG = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
           (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 120, 48, True, True, 1),
           (5, 288, 96, True, True, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width_mult: float = 1.0,
                 cfg=CFG, last: int = 256, act: type[nn.Module] = nn.Hardswish, gate: type[nn.Module] = nn.Hardsigmoid):
        super().__init__()
        c = lambda v: max(8, int(round(v * width_mult / 8)) * 8)  # noqa: E731
        cin = c(16)
        feats: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                                                act())]
        for k, e, o, se, hs, s in cfg:
            feats.append(MBConv(cin, c(e), c(o), k, s, se, act if hs else nn.ReLU, gate))
            cin = c(o)
        feats.append(nn.Sequential(nn.Conv2d(cin, c(6 * cin), 1, bias=False), nn.BatchNorm2d(c(6 * cin)), act()))
        self.features = nn.Sequential(*feats)
        self.head = nn.Sequential(nn.Linear(c(6 * cin), last), act())
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit (Ma et al. 2018): split in halves (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.left = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                      nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        bin_ = cin if stride > 1 else half
        self.right = nn.Sequential(nn.Conv2d(bin_, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                   nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                   nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride > 1:
            y = torch.cat([self.left(x), self.right(x)], 1)
        else:
            a, b = x.chunk(2, dim=1)
            y = torch.cat([a, self.right(b)], 1)
        return channel_shuffle(y, 2)


class ShuffleNetV2Small(nn.Module):
    """ShuffleNetV2 for small inputs: conv, 3x3/2 max pool (padding 1), stages of shuffle units, 1x1 conv."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                 stages: Sequence[tuple[int, int]] = ((48, 2), (96, 2)), stem: int = 24, last: int = 256):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        units, cin = [], stem
        for cout, n in stages:
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.units = nn.Sequential(*units)
        self.conv = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU())
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.conv(self.units(self.pool(self.stem(x))))
        return self.classifier(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """RegNetX-style stages of grouped 3x3 convs (groups > 1, not depthwise) between 1x1 convs, with residuals,
    and a SqueezeNet-style fire module (1x1 squeeze, then 1x1 and 3x3 expands concatenated)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: int = 32,
                 group_width: int = 8):
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w, 3, 1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.squeeze = nn.Sequential(nn.Conv2d(w, w // 2, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(w // 2, w // 2, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(w // 2, w // 2, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(conv_bn(w, w, 1), nn.ReLU(), conv_bn(w, w, 3, 2, groups=w // group_width), nn.ReLU(),
                               conv_bn(w, 2 * w, 1))
        self.a_short = conv_bn(w, 2 * w, 1, 2)
        self.b = nn.Sequential(conv_bn(2 * w, 2 * w, 1), nn.ReLU(), conv_bn(2 * w, 2 * w, 3, 1, groups=2 * w // group_width),
                               nn.ReLU(), conv_bn(2 * w, 2 * w, 1))
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        s = self.squeeze(x)
        x = torch.cat([self.e1(s), self.e3(s)], 1)
        x = F.relu(self.a(x) + self.a_short(x))
        x = F.relu(self.b(x) + x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("resnet8")
def resnet8(**kw) -> nn.Module:
    """ResNet-8, widths 16/32/64: the default model (9.3 M MACs at 28x28, ~46 s/epoch on 2 cores)."""
    return CifarResNet(depth=8, widths=(16, 32, 64), **kw)


@MODELS.register("resnet20")
def resnet20(**kw) -> nn.Module:
    return CifarResNet(depth=20, widths=(16, 32, 64), **kw)


@MODELS.register("resnet56")
def resnet56(**kw) -> nn.Module:
    return CifarResNet(depth=56, widths=(16, 32, 64), **kw)


@MODELS.register("mobilenetv2")
def mobilenetv2(**kw) -> nn.Module:
    return MobileNetV2Small(width_mult=1.0, **kw)


@MODELS.register("vgg11")
def vgg11(**kw) -> nn.Module:
    return VGGSmall(cfg=(64, "M", 128, "M", 256, 256, "M", 512, 512), **kw)


# Tiny variants for tests: same structure, few channels.
@MODELS.register("tiny_resnet")
def tiny_resnet(**kw) -> nn.Module:
    return CifarResNet(depth=8, widths=(8, 16, 16), **kw)


@MODELS.register("tiny_mobilenet")
def tiny_mobilenet(**kw) -> nn.Module:
    return MobileNetV2Small(width_mult=0.5, cfg=((1, 8, 1, 1), (2, 16, 2, 2), (2, 24, 1, 2)), last=32, **kw)


@MODELS.register("tiny_vgg")
def tiny_vgg(**kw) -> nn.Module:
    return VGGSmall(cfg=(8, "M", 16, "M", 16), **kw)


@MODELS.register("mobilenetv3")
def mobilenetv3(**kw) -> nn.Module:
    """MobileNetV3-Small's blocks (SE, hard-swish) for small inputs."""
    return MobileNetV3Small(**kw)


@MODELS.register("tiny_mbv3")
def tiny_mbv3(**kw) -> nn.Module:
    """SE with hard-sigmoid, hard-swish, depthwise, residual add."""
    return MobileNetV3Small(cfg=((3, 16, 16, True, False, 2), (3, 32, 16, True, True, 1), (5, 48, 24, True, True, 2)),
                            width_mult=1.0, last=32, **kw)


@MODELS.register("tiny_effnet")
def tiny_effnet(**kw) -> nn.Module:
    """EfficientNet's blocks: SiLU, SE with a sigmoid gate."""
    return MobileNetV3Small(cfg=((3, 16, 16, True, True, 2), (3, 32, 16, True, True, 1), (3, 48, 24, True, True, 2)),
                            last=32, act=nn.SiLU, gate=nn.Sigmoid, **kw)


@MODELS.register("tiny_shufflenet")
def tiny_shufflenet(**kw) -> nn.Module:
    """Split, concat, channel shuffle, 3x3/2 max pool with padding."""
    return ShuffleNetV2Small(stages=((16, 2), (32, 1)), stem=8, last=32, **kw)


@MODELS.register("tiny_grouped")
def tiny_grouped(**kw) -> nn.Module:
    """Grouped convs (groups 2-4, not depthwise), a fire module's concat, a ceil-mode max pool."""
    return GroupedNet(width=16, group_width=8, **kw)


def create(name: str, *, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """A registered architecture, or your own: `path/net.py:make_model`, `package.module:make_model`."""
    from edge_sparse import usermodel

    if usermodel.is_ref(name):
        m = usermodel.instantiate(name)
        usermodel.check_io(m, (in_channels, input_size, input_size), num_classes, f"--model {name}")
        return m
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


# --------------------------------------------------------------------------- save / load without pickles

def load_state(model: nn.Module, state: dict, strict: bool = True) -> None:
    """`model.load_state_dict(state)` for a plain dict of tensors (from safetensors, or a dict comprehension): the
    model's own per-module metadata goes along, which modules with a custom `_load_from_state_dict` read
    (torchvision's MNASNet refuses a state dict without its version)."""
    from collections import OrderedDict

    state = OrderedDict(state)
    meta = getattr(model.state_dict(), "_metadata", None)
    if meta is not None:
        state._metadata = meta  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=strict)


def save(model: nn.Module, directory, *, arch: str, kwargs: dict, record: dict | None = None) -> None:
    """`model.json` (architecture name, kwargs, pruning record) + `model.safetensors` (weights)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from edge_sparse import _io

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with _io.atomic_path(d / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    _io.write_json(d / "model.json", {"arch": arch, "kwargs": kwargs, "record": record})


def load(directory) -> tuple[nn.Module, dict]:
    """Rebuild the (possibly shrunk) model from `model.json` and load `model.safetensors`."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from edge_sparse.errors import EdgeSparseError

    d = Path(directory)
    try:
        spec = json.loads((d / "model.json").read_text())
        arch, kwargs = spec["arch"], spec["kwargs"]
    except (OSError, ValueError, KeyError) as e:
        raise EdgeSparseError(f"{d}/model.json: not a saved edge_sparse model ({e})") from None
    try:
        model = create(arch, **kwargs)
    except KeyError as e:
        raise EdgeSparseError(f"{d}/model.json: {e.args[0]}") from None
    if spec.get("record"):
        from edge_sparse.pruning import replay

        model = replay(model, spec["record"])
    try:
        state = load_file(str(d / "model.safetensors"))
        load_state(model, state)
    except (OSError, RuntimeError) as e:
        raise EdgeSparseError(f"{d}/model.safetensors does not fit {arch} ({str(e).splitlines()[0]})") from None
    return model.eval(), spec
