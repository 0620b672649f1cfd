"""The CIFAR ResNets of the distillation literature: ResNet-8x4, ResNet-32x4, ResNet-20 and kin.

He et al. (2016, section 4.2) built ResNets for 32x32 images from a 3x3 stem and three stages of
``n`` basic blocks at strides 1, 2, 2, ``6n + 2`` layers deep. The distillation benchmarks
(Tian et al., CRD, ICLR 2020, and every table since) use them with wider stages: ResNet-32x4 and
ResNet-8x4 have a 32-channel stem and 64, 128, 256 channels (1.23M and 7.43M parameters at 100
classes), ResNet-56 and ResNet-20 the original 16, 16, 32, 64. timm and torchvision do not ship
these, so the published CIFAR-100 pairs need them here.

Each block's residual sum, before its last ReLU, passes through a module of its own (``preact``),
so a method that distills pre-activation features (OFD) can tap ``layer3.0.preact``.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from kdengine import DataInfo, KDEngineError, ModelFactory, Params

#: The named widths of the literature: stem, stage 1, stage 2, stage 3.
WIDTHS = {"x1": [16, 16, 32, 64], "x4": [32, 64, 128, 256]}


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))
        self.preact = nn.Identity()  # the residual sum before the ReLU, as a tappable module
        self.relu_out = nn.ReLU()  # not in place: the tapped pre-activation must survive it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            layer = []
            for block in range(blocks):
                layer.append(BasicBlock(channels, width, stride if block == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()  # the pooled embedding, a module of its own for CRD, RKD, PKT
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


class CifarResNetModel(ModelFactory):
    """CIFAR ResNet (He et al. 2016; the x4 widths of CRD's benchmark): resnet8x4, resnet32x4, resnet20 ..."""

    class Params(Params):
        depth: int = Field(description="6n + 2 layers: 8, 20, 32, 56, 110 ...")
        widths: str | list[int] = Field("x1", description="'x1' (16, 16, 32, 64), 'x4' (32, 64, 128, 256), "
                                        "or the stem and three stage widths")

        @model_validator(mode="after")
        def _check(self):
            if self.depth < 8 or (self.depth - 2) % 6:
                raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32 ...), not {self.depth}")
            if isinstance(self.widths, str) and self.widths not in WIDTHS:
                raise ValueError(f"widths '{self.widths}' is not one of {', '.join(WIDTHS)}; or give four numbers")
            if isinstance(self.widths, list) and (len(self.widths) != 4 or min(self.widths) < 1):
                raise ValueError("widths: four positive numbers, the stem's and the three stages'")
            return self

    def build(self, info: DataInfo) -> nn.Module:
        if not info.num_classes:
            raise KDEngineError(f"a classifier needs a dataset with classes; this one is a '{info.task}' dataset")
        widths = WIDTHS[self.params.widths] if isinstance(self.params.widths, str) else self.params.widths
        return CifarResNet(self.params.depth, list(widths), info.num_classes, info.in_channels)
