"""PyTorch modules as users write them: no EDGESMITH_SPEC, no output names, several output
structures and input dtypes (tests/export/test_user_modules.py)."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import torch
from torch import nn

Pair = namedtuple("Pair", "logits hidden")


@dataclass
class Result:
    logits: torch.Tensor
    attentions: torch.Tensor | None = None  # None: not an output


class One(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(x)


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 4), nn.Linear(12, 3)

    def forward(self, x):
        return self.a(x), self.b(x)


class Keyed(Two):
    def forward(self, x):
        return {"scores": self.a(x), "embedding": self.b(x)}


class Named(Two):
    def forward(self, x):
        return Pair(self.a(x), self.b(x))


class Record(Two):
    def forward(self, x):
        return Result(self.a(x))


class Mixed(nn.Module):
    """int64 ids, a bool mask and float features; forward's parameters in another order than
    the command line gives them (they are passed by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(12, 2)

    def forward(self, feats, ids, mask=None):
        h = self.emb(ids) * mask.unsqueeze(-1).to(feats.dtype)
        return {"logits": self.fc(torch.cat([h.mean(1), feats], -1))}


def one():
    return One()


def two():
    return Two()


def keyed():
    return Keyed()


def named():
    return Named()


def record():
    return Record()


def mixed():
    return Mixed()


class Branchy(One):
    """Data-dependent control flow: torch.export cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def branchy():
    return Branchy()
