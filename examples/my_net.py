"""A model of your own, outside the package: what `edge-sparse build --model examples/my_net.py:mobilenet_v2` loads.

A factory is any function that returns an `nn.Module`; the build reads the input size, channels and classes from the
data and checks them against the model's first conv and last layer. This file is the one README's "Bring your model"
section and `python -m benchmarks.byom` use.
"""
import torch
import torch.nn as nn


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> 3x3 depthwise -> 1x1 project, ReLU6, a residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2Style(nn.Module):
    """MobileNetV2's layout (inverted residuals, depthwise convs, ReLU6), narrow, for 3x96x96 images."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6),
            InvertedResidual(24, 32, 2, 6), InvertedResidual(32, 32, 1, 6),
            InvertedResidual(32, 64, 2, 6), InvertedResidual(64, 64, 1, 6))
        self.head = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return MobileNetV2Style()
