"""How much each attention head and FFN neuron matters, and which to keep.

- magnitude: the sum of |w| over a head's rows of Q, K, V and columns of the output
  projection; over a neuron's row of the FFN's first Linear and column of its second.
- taylor: the same sums of |gradient × weight|, the gradient of the task loss accumulated over
  batches of the data: first-order Taylor importance, Michel et al. 2019 ("Are Sixteen Heads
  Really Better than One?") for heads, Molchanov et al. 2019 for neurons. It needs labels
  (cross-entropy); without them the loss would be the model against itself, whose gradient
  is zero, so `auto` takes magnitude for unlabelled data.

Selection keeps, in each layer, the highest-scoring heads and neurons; `global` ranks across
layers (each layer's scores divided by their mean, so layers of different scale compare) with
at least one head and `round_to` neurons left in every layer. Kept FFN sizes are multiples of
`round_to`, so the int8 and float kernels keep their efficient tile sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgesmith.toolchain.models.encoder import EncoderLayer, head_dim

IMPORTANCE = ("auto", "taylor", "magnitude")


@dataclass
class Scores:
    heads: list[np.ndarray]  # per layer: one score per remaining head (in remaining order)
    ffn: list[np.ndarray]  # per layer: one score per neuron
    kind: str  # "taylor" or "magnitude"


def _per_head(layer: EncoderLayer, d: int, values) -> np.ndarray:
    """Sum a per-weight tensor (|w| or |g·w|) over each head's rows / columns."""
    q, k, v, o = values  # weights [out, in]: a head is d rows of Q, K, V and d columns of O
    rows = (q.sum(1) + k.sum(1) + v.sum(1)).reshape(-1, d).sum(1)
    cols = o.sum(0).reshape(-1, d).sum(1)
    return (rows + cols).double().cpu().numpy()


def _head_values(layer: EncoderLayer, fn) -> tuple:
    lins = (layer.query, layer.key, layer.value, layer.output)
    return tuple(fn(lin.weight) for lin in lins)


def _ffn_values(layer: EncoderLayer, fn) -> np.ndarray:
    s = fn(layer.ffn_in.weight).sum(1) + fn(layer.ffn_out.weight).sum(0)
    if layer.ffn_in.bias is not None:
        s = s + fn(layer.ffn_in.bias)
    return s.double().cpu().numpy()


def magnitude_scores(model, layers: list[EncoderLayer]) -> Scores:
    d = head_dim(model)
    with torch.no_grad():
        heads = [_per_head(lay, d, _head_values(lay, torch.abs)) for lay in layers]
        ffn = [_ffn_values(lay, torch.abs) for lay in layers]
    return Scores(heads, ffn, "magnitude")


def taylor_scores(model, layers: list[EncoderLayer], batches, loss_fn) -> Scores:
    """|gradient × weight| per head and neuron, summed over `batches` of (feeds, labels).

    `loss_fn(feeds, labels)` runs the model and returns the scalar loss."""
    d = head_dim(model)

    def score(gw) -> list[np.ndarray]:
        heads = [_per_head(lay, d, _head_values(lay, gw)) for lay in layers]
        return heads + [_ffn_values(lay, gw) for lay in layers]

    sums = accumulate_taylor(model, batches, loss_fn, score)
    return Scores(sums[: len(layers)], sums[len(layers) :], "taylor")


def accumulate_taylor(model, batches, loss_fn, score) -> list[np.ndarray]:
    """`score(gw)` summed over `batches`, where gw(w) = |∂loss/∂w × w| after the batch's
    backward pass; the model's gradients and requires_grad flags are left as they were."""
    model.eval()  # dropout off: the gradient of the model that will be pruned
    params = [p for p in model.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)

    def gw(w: torch.Tensor) -> torch.Tensor:
        return (w.grad * w).abs() if w.grad is not None else torch.zeros_like(w)

    sums: list[np.ndarray] | None = None
    try:
        for feeds, labels in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(feeds, labels).backward()
            with torch.no_grad():
                got = score(gw)
            sums = got if sums is None else [a + b for a, b in zip(sums, got, strict=True)]
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in zip(params, was, strict=True):
            p.requires_grad_(r)
    if sums is None:
        raise ValueError("taylor importance needs at least one batch")
    return sums


def round_size(n: float, total: int, round_to: int) -> int:
    """n kept units rounded to a multiple of round_to, at least round_to, at most total."""
    if round_to <= 1:
        return max(1, min(total, round(n)))
    return min(total, max(round_to, int(round(n / round_to)) * round_to))


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, ascending (ties: the lower index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return sorted(int(i) for i in order[:k])


def select(
    scores: Scores,
    heads_fraction: float,
    ffn_fraction: float,
    round_to: int = 8,
    scope: str = "layer",
) -> tuple[list[list[int]], list[list[int]]]:
    """Per layer: the positions (into the scores) of the heads and neurons to keep; the
    fractions are in [0, 1) (prune/stage.py checks what a user gives)."""
    if scope == "global":
        return (
            _global(scores.heads, heads_fraction, 1),
            select_units(scores.ffn, ffn_fraction, round_to, scope),
        )
    heads = [_top(s, max(1, math.ceil(len(s) * (1 - heads_fraction)))) for s in scores.heads]
    return heads, select_units(scores.ffn, ffn_fraction, round_to, scope)


def select_units(
    per_layer: list[np.ndarray], fraction: float, round_to: int, scope: str
) -> list[list[int]]:
    """Per layer (an FFN, a channel group): the units to keep, counts multiples of round_to."""
    if scope == "global":
        return _global(per_layer, fraction, round_to)
    return [_top(s, round_size(len(s) * (1 - fraction), len(s), round_to)) for s in per_layer]


def _global(per_layer: list[np.ndarray], fraction: float, unit: int) -> list[list[int]]:
    """Keep the globally best (1 - fraction) of all units, each layer's scores over their
    mean; every layer keeps at least `unit`, and its count is rounded to a multiple of it."""
    normed = [s / s.mean() if s.size and s.mean() > 0 else s for s in per_layer]
    total = sum(len(s) for s in normed)
    keep_total = max(len(normed) * unit, round(total * (1 - fraction)))
    flat = np.concatenate(normed)
    threshold = np.sort(flat)[::-1][min(keep_total, total) - 1]
    out = []
    for s in normed:
        n = int((s >= threshold).sum())
        out.append(_top(s, round_size(n, len(s), unit)))
    return out
