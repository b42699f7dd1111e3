"""Student factories for the tests (imported by reference, as users' factories are)."""

from __future__ import annotations

from torch import nn


def five_classes() -> nn.Module:
    """Runs on digits inputs but predicts 5 classes where the teacher has 10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))


def not_a_module() -> str:
    return "a string"


def spec_less_teacher() -> nn.Module:
    """A teacher whose factory declares no EDGESMITH_SPEC: its inputs come from --input."""
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))


def spec_less_student() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 4))
