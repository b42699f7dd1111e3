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


two_inputs.EDGESMITH_SPEC = {  # type: ignore[attr-defined]
    "inputs": {
        "x": {"shape": [1, 6], "dtype": "float32", "dynamic": [0]},
        "y": {"shape": [1, 4], "dtype": "float32", "dynamic": [0]},
    },
    "outputs": ["sum", "squashed"],
}


class ResidualCNN(nn.Module):
    """What channel pruning must keep consistent: Conv → BatchNorm, a residual block (the
    stem's and the block's outputs are added, so they are pruned as one), a depthwise conv,
    global pooling + flatten into a Linear head with a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(24)
        self.c2 = nn.Conv2d(24, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(16, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        r = torch.relu(self.bn1(self.c1(s)))
        s = torch.relu(s + self.bn2(self.c2(r)))
        s = self.pool(self.dw(s)).flatten(1)
        return self.head(torch.relu(self.hidden(s)))


def residual_cnn() -> nn.Module:
    net = ResidualCNN()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (net.bn0, net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net


residual_cnn.EDGESMITH_SPEC = {  # type: ignore[attr-defined]
    "inputs": {"x": {"shape": [1, 3, 8, 8], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["logits"],
}


class OddMLP(nn.Module):
    """No reduction axis a multiple of 4 (7 and 5 inputs): nothing 2:4 can take."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def odd_mlp() -> nn.Module:
    return OddMLP()


odd_mlp.EDGESMITH_SPEC = {  # type: ignore[attr-defined]
    "inputs": {"x": {"shape": [1, 7], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["logits"],
}


class ScoresAndEmbedding(nn.Module):
    """A classifier that also returns its 16-wide embedding: two [N, k] float outputs, only
    one of which is class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.tanh(self.embed(x))
        return self.head(e), e


def scores_and_embedding() -> nn.Module:
    return ScoresAndEmbedding()


scores_and_embedding.EDGESMITH_SPEC = {  # type: ignore[attr-defined]
    "inputs": {"x": {"shape": [1, 12], "dtype": "float32", "dynamic": [0]}},
    "outputs": ["scores", "embedding"],
}
