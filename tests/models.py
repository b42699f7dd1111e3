"""Tiny seeded models built in code, importable as factories (tests.models:NAME)."""

from __future__ import annotations

import torch
from torch import nn

EDGESMITH_SPEC = {
    "inputs": {"x": {"shape": [1, 12], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["logits"],
}


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_mlp() -> nn.Module:
    return TinyMLP()


class TwoInputs(nn.Module):
    """Two inputs, two outputs: names and order must survive export."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.a(x) + self.b(y)
        return s, torch.tanh(s)


def two_inputs() -> nn.Module:
    return TwoInputs()
