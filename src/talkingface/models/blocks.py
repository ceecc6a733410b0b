"""Small building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_block(cin: int, cout: int, stride: int = 1, k: int = 3, norm: str = "batch", act: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=norm == "none")]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    elif norm == "instance":
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, c: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(conv_block(c, c, norm=norm), conv_block(c, c, norm=norm, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
