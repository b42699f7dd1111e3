"""The pieces of distillation's epochs: each process's batches, the learning rate at a step,
the eval metric, and the parameters left out of training."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgesmith.calibration.sources import Dataset
from edgesmith.toolchain.training.parallel import to_tensors

BUCKET_BATCHES = 16  # batches sorted by length together (text); see epoch_batches


def evaluate(
    student_out: torch.Tensor, teacher_out: torch.Tensor, labels: np.ndarray | None, loss: str
) -> tuple[str, float]:
    """The eval metric (higher is better): accuracy, top-1 agreement, or mean cosine."""
    if loss == "embedding":
        cos = torch.nn.functional.cosine_similarity(
            student_out.flatten(1), teacher_out.flatten(1), dim=-1
        )
        return "cosine", float(cos.mean())
    pred = student_out.argmax(-1).cpu().numpy()
    if labels is not None:
        return "accuracy", float((pred == labels).mean())
    return "agreement", float((pred == teacher_out.argmax(-1).cpu().numpy()).mean())


def freeze_unused(student: nn.Module, data: Dataset, output: str, device: torch.device) -> int:
    """Stop training parameters the compared output does not depend on; returns how many.

    A sentence-transformers BERT computes a pooler the embedding never uses; DDP requires
    every trained parameter to get a gradient (else find_unused_parameters, which costs a
    graph traversal on every step), so one probe pass finds them once.
    """
    student.train()
    feeds = student.prepare(to_tensors(data.feeds, np.arange(min(2, len(data))), device))
    student(**feeds)[output].float().sum().backward()
    frozen = 0
    for p in student.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen += 1
        p.grad = None
    return frozen


def epoch_batches(
    order: np.ndarray, size: int, lengths: np.ndarray | None, seed: int
) -> list[np.ndarray]:
    """This process's batches, in sampler order; with `lengths`, grouped by length.

    Grouping: each run of BUCKET_BATCHES batches is sorted by length before it is cut, and
    the batches are then shuffled (the same permutation on every process). Batches of
    similar lengths carry little padding, which on text is most of the compute.
    """
    if lengths is None:
        return [order[i : i + size] for i in range(0, len(order), size)]
    chunk = size * BUCKET_BATCHES
    out = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[i : i + size] for i in range(0, len(part), size)]
    perm = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in perm]


WARMUP = 0.05  # of the run's steps, the rate rising linearly to its peak (at most 200 steps)


def lr_at(peak: float, step: int, total: int) -> float:
    """A linear warm-up, then cosine decay to zero over the run; a function of the step so
    resume needs no state."""
    warm = min(200, math.ceil(WARMUP * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
