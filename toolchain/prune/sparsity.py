"""Weight sparsity: magnitude, movement and 2:4 masks over a model's weight matrices, applied
in the forward pass while the model recovers, then made permanent (plain weights with the
zeros in them: no mask parameters and no Mul by a mask reach the ONNX).

- magnitude: the weights of smallest |w| are zero; one-shot (the final mask before recovery)
  or gradual, the sparsity rising on the cubic schedule of Zhu & Gupta 2017
  (s_t = s_f · (1 − (1 − (t − t0)/(t1 − t0))³) between steps t0 and t1); a weight masked by
  magnitude is set to zero, as in their paper.
- movement (Sanh et al. 2020): each weight's score S is learned from ∂L/∂S = W·∂L/∂W' (W'
  the masked weight; straight through the mask, so a masked weight keeps its score and can
  come back) while the model fine-tunes, on the same cubic schedule. As in the authors' code
  (transformers' research_projects/movement-pruning: scores trained by AdamW at 1e-2 from a
  constant 0), S takes Adam's steps, not the raw sum of −W·∂L/∂W': Adam divides each score's
  update by the root mean square of its own gradient, so a weight scores by how consistently it
  moves away from zero, on one scale for every weight and layer (what soft's single threshold
  compares). hard: each layer keeps its top scores, the count on the cubic schedule. soft
  (Sanh's sigmoid threshold): a weight is kept while sigmoid(S) > SOFT_THRESHOLD, and an L1
  regulariser λ·Σ sigmoid(S) pulls every score down, so the weights the task does not push up
  fall below the threshold and each layer's sparsity follows its scores. Sanh et al. tune λ
  per run to land on a sparsity; here λ is set from the requested one: a controller moves it
  at every step (λ ← λ·e^(k·error), starting from the scale of the task's own score
  gradient) so that the sparsity the scores are heading for meets the schedule's. Heading
  for, not reached: a score takes a couple of hundred steps to cross the threshold, and a λ
  driven by the sparsity reached winds up over that lag and overshoots (measured: 99.5% when
  50% was asked); each score's position HORIZON steps on, at its current Adam step, has no lag.
- 2:4: of every 4 consecutive weights along the reduction axis (a Linear's in_features, a
  conv's input channels) the 2 of smallest |w| are zero; layers whose axis is not a multiple
  of 4 are skipped; the mask stays fixed while the model recovers.

Under torchrun the score updates are averaged across the processes before they are applied,
so every process keeps the same scores and masks.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.training.trainer import Callback

METHODS = ("magnitude", "movement", "2:4")
SOFT_THRESHOLD = 0.1  # soft movement keeps a weight while sigmoid(score) > it (Sanh et al.)
SOFT_LOGIT = math.log(SOFT_THRESHOLD / (1 - SOFT_THRESHOLD))  # the same, on the score itself
SOFT_TOLERANCE = 0.01  # soft movement: an epoch this close to the sparsity asked may be the result
SOFT_GAIN = 1.0  # the λ controller's k: λ·e^(k·(scheduled − heading-for sparsity)) a step


def sigmoid_slope(scores: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(scores)
    return sig * (1 - sig)


class _Masked(torch.autograd.Function):
    """W' = W ⊙ M; backward: ∂L/∂W = ∂L/∂W' ⊙ M, and (movement) delta −= ∂L/∂W' ⊙ W."""

    @staticmethod
    def forward(ctx, w, mask, delta):
        ctx.save_for_backward(w, mask)
        ctx.delta = delta
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        if ctx.delta is not None:
            ctx.delta.sub_(g * w)
        return g * mask, None, None


class WeightMask(nn.Module):
    """The parametrization of one weight: its mask, and when movement is tracked its scores
    and their Adam moments (all in the module's state, so a checkpoint resumes them)."""

    # the authors' mask_scores_learning_rate and AdamW's defaults; the scores start at 0, so
    # the rate scales every score alike and no ranking depends on it
    SCORE_LR, BETAS = 1e-2, (0.9, 0.999)
    EPS = 1e-12  # below AdamW's 1e-8: W·∂L/∂W' of a fine-tuned model can be that small

    def __init__(self, weight: torch.Tensor, movement: bool) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))
        self.movement = movement
        if movement:
            for name in ("scores", "score_avg", "score_sq"):
                self.register_buffer(name, torch.zeros_like(weight))
            self.register_buffer("score_steps", torch.zeros((), dtype=torch.int64))
            # soft movement's λ (the same in every mask; in the state, so a resumed run goes
            # on with it); negative: not started
            self.register_buffer("l1", torch.full((), -1.0, dtype=torch.float64))
            self.register_buffer("delta", torch.zeros_like(weight), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        delta = self.delta if self.movement and torch.is_grad_enabled() else None
        return _Masked.apply(w, self.mask, delta)

    def score_step(self, l1: float = 0.0) -> None:
        """One Adam step of the scores on this step's −∂L/∂S (in `delta`) and, for soft
        movement, the L1 regulariser's −λ·∂sigmoid(S)/∂S; then clear `delta`."""
        if l1:
            self.delta.sub_(sigmoid_slope(self.scores), alpha=l1)
        b1, b2 = self.BETAS
        self.score_steps += 1
        t = int(self.score_steps)
        self.score_avg.mul_(b1).add_(self.delta, alpha=1 - b1)
        self.score_sq.mul_(b2).addcmul_(self.delta, self.delta, value=1 - b2)
        denom = (self.score_sq / (1 - b2**t)).sqrt_().add_(self.EPS)
        self.scores.addcdiv_(self.score_avg, denom, value=self.SCORE_LR / (1 - b1**t))
        self.delta.zero_()


# the steps a score takes at Adam's full rate (SCORE_LR) to fall from 0 to the threshold
# (half of it: a falling score's pull, λ·sigmoid'(S), weakens as it falls, so a straight
# line from its current step overestimates how far it gets; measured on the tests' encoder:
# the full horizon reached 44% by the end of a 50% run, half of it 49.7%)
HORIZON = round(-SOFT_LOGIT / WeightMask.SCORE_LR / 2)


@dataclass
class Target:
    """One weight matrix that is made sparse."""

    name: str  # the module's name in the model
    module: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def axis(self) -> int:
        """The reduction axis of the weight (in_features; a conv's input channels)."""
        return 1

    @property
    def param(self) -> WeightMask:
        return self.module.parametrizations.weight[0]


def encoder_targets(model: nn.Module) -> list[Target]:
    """A transformer encoder's weight matrices: Q, K, V, the attention output and the FFN's
    two, in every layer (models/encoder.py finds them); embeddings and the head stay dense."""
    from edgesmith.toolchain.models.encoder import encoder_layers

    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for lay in encoder_layers(model):
        for m in (lay.query, lay.key, lay.value, lay.output, lay.ffn_in, lay.ffn_out):
            out.append(Target(names[id(m)], m))
    return out


def module_targets(model: nn.Module) -> list[Target]:
    """A PyTorch model's Conv2d (not grouped) and Linear weights."""
    return [
        Target(n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    ]


def two_four_eligible(t: Target) -> bool:
    return t.weight.shape[t.axis] % 4 == 0


def install(targets: list[Target], movement: bool) -> None:
    for t in targets:
        parametrize.register_parametrization(t.module, "weight", WeightMask(t.weight, movement))


def make_permanent(targets: list[Target]) -> None:
    """Bake each mask into its weight and remove the parametrization: plain weights remain."""
    for t in targets:
        parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=True)


def _original(t: Target) -> torch.Tensor:
    return t.module.parametrizations.weight.original


def cubic(step: int, start: int, end: int, final: float) -> float:
    """Zhu & Gupta's schedule: 0 before `start`, `final` from `end`, cubic in between."""
    if step < start:
        return 0.0
    if step >= end or end <= start:
        return final
    return final * (1 - (1 - (step - start) / (end - start)) ** 3)


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based). On the CPU numpy's introselect (np.partition), about
    twice as fast as torch.kthvalue on the 10.6M scores of MiniLM's encoder
    (benchmarks/movement_step_cost.py) and free of the GIL, so layers run in parallel."""
    if flat.device.type != "cpu":
        return flat.kthvalue(k).values
    values = flat.detach()
    values = values.float() if values.dtype == torch.bfloat16 else values  # numpy has no bf16
    value = np.partition(values.numpy(), k - 1)[k - 1]
    return torch.tensor(value, dtype=flat.dtype)


def _keep_top(scores: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None = None):
    """A 0/1 mask keeping the (1 − sparsity) highest scores: exactly that many, every kept
    score >= every dropped one. Scores tied at the threshold go to the larger `tiebreak` (|W|);
    the first movement step leaves every score at ±lr, and a positional tie-break would drop
    whole contiguous rows. A selection, not a sort: it runs at every step."""
    n = scores.numel()
    drop = int(round(n * sparsity))
    flat = scores.reshape(-1)
    if drop <= 0:
        return torch.ones_like(scores)
    threshold = _kth_smallest(flat, drop)
    mask = (flat > threshold).to(scores.dtype)
    need = (n - drop) - int(mask.sum())  # kept places left for scores tied at the threshold
    if need > 0:
        ties = (flat == threshold).nonzero().squeeze(1)
        key = tiebreak.reshape(-1)[ties] if tiebreak is not None else ties.to(flat.dtype)
        mask[ties[torch.topk(key, need).indices]] = 1
    return mask.reshape(scores.shape)


def masks_by_score(
    scores: list[torch.Tensor],
    sparsity: float,
    scope: str,
    tiebreak: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Per layer (top scores of each) or global (one threshold over all)."""
    if scope == "layer":
        ties = tiebreak or [None] * len(scores)
        pairs = list(zip(scores, ties, strict=True))
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            return list(pool.map(lambda st: _keep_top(st[0], sparsity, st[1]), pairs))

    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ts])

    flat = _keep_top(cat(scores), sparsity, cat(tiebreak) if tiebreak else None)
    out, at = [], 0
    for s in scores:
        out.append(flat[at : at + s.numel()].reshape(s.shape))
        at += s.numel()
    return out


def two_four_mask(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Keep the 2 of largest |w| in every 4 consecutive weights along `axis`."""
    moved = w.detach().abs().movedim(axis, -1)
    groups = moved.reshape(-1, 4)
    keep = torch.zeros_like(groups)
    keep.scatter_(1, torch.topk(groups, 2, dim=1).indices, 1.0)
    return keep.reshape(moved.shape).movedim(-1, axis)


class Sparsifier:
    """The masks of one model for one method: set before recovery (one-shot, 2:4) or updated
    by the training loop (trainer callbacks: gradual magnitude, movement)."""

    def __init__(self, targets: list[Target], cfg: Any) -> None:
        self.targets, self.cfg = targets, cfg
        self.method, self.sparsity = cfg.method, cfg.weight_sparsity()
        self.movement = self.method == "movement"
        if self.method == "2:4":
            self.targets = [t for t in targets if two_four_eligible(t)]
            if not self.targets:
                raise InvalidInput(
                    "--method 2:4: no layer is eligible (no weight's reduction axis is a "
                    "multiple of 4)"
                )
        self.soft = self.movement and cfg.movement == "soft"
        install(self.targets, self.movement)
        self.current = 0.0
        self.scheduled: float | None = None  # soft: the schedule's sparsity now (None: before)

    @property
    def gradual(self) -> bool:
        return self.movement or (self.method == "magnitude" and self.cfg.schedule == "cubic")

    def _set(self, masks: list[torch.Tensor], zero: bool) -> None:
        with torch.no_grad():
            for t, m in zip(self.targets, masks, strict=True):
                t.param.mask.copy_(m)
                if zero:  # magnitude: a masked weight is zero (Zhu & Gupta)
                    _original(t).mul_(m)

    def start(self) -> None:
        """The masks before recovery: the final ones (one-shot, 2:4), or none yet (gradual)."""
        if self.method == "2:4":
            self._set([two_four_mask(_original(t), t.axis) for t in self.targets], zero=True)
            self.current = 0.5
        elif not self.gradual:
            self.update_magnitude(self.sparsity)

    def update_magnitude(self, sparsity: float) -> None:
        scores = [_original(t).detach().abs() for t in self.targets]
        self._set(masks_by_score(scores, sparsity, self.cfg.scope), zero=True)
        self.current = sparsity

    def preview(self) -> None:
        """The final-sparsity magnitude masks, weights left as they are (clear() undoes it)."""
        scores = [_original(t).detach().abs() for t in self.targets]
        self._set(masks_by_score(scores, self.sparsity, self.cfg.scope), zero=False)

    def clear(self) -> None:
        self._set([torch.ones_like(t.param.mask) for t in self.targets], zero=False)
        self.current = 0.0

    def update_soft(self) -> None:
        """Soft movement: keep the weights whose sigmoid(score) is over the threshold."""
        self._set([(t.param.scores > SOFT_LOGIT).to(t.param.mask.dtype) for t in self.targets],
                  zero=False)  # fmt: skip
        self.current = self.masked_fraction()

    def masked_fraction(self) -> float:
        """The fraction of all the targets' weights the masks drop now."""
        masks = [t.param.mask for t in self.targets]
        return 1 - float(sum(m.sum() for m in masks)) / sum(m.numel() for m in masks)

    def heading_for(self) -> float:
        """The fraction of scores under the soft threshold HORIZON steps on, each moving by
        its current Adam step (WeightMask.score_step's, without bias correction's last bit)."""
        under, total = 0, 0
        for t in self.targets:
            p = t.param
            step = p.score_avg / (p.score_sq.sqrt() + p.EPS)
            under += int((p.scores + HORIZON * p.SCORE_LR * step <= SOFT_LOGIT).sum())
            total += p.scores.numel()
        return under / total

    @property
    def l1(self) -> float:
        """Soft movement's λ at the last step (0 before the schedule starts)."""
        return max(0.0, float(self.targets[0].param.l1)) if self.movement else 0.0

    def _set_l1(self, value: float) -> None:
        for t in self.targets:
            t.param.l1.fill_(value)

    def _soft_l1(self) -> float:
        """λ for this step (module docstring): 0 before the schedule starts; then from the
        scale of the task's score gradient, moved by the heading-for sparsity's error."""
        if self.scheduled is None or self.sparsity == 0:
            return 0.0
        if float(self.targets[0].param.l1) < 0:  # the schedule's first step
            grads = torch.cat([t.param.delta.abs().reshape(-1) for t in self.targets])
            return max(float(grads.mean()), 1e-12)
        error = self.scheduled - self.heading_for()
        return self.l1 * float(torch.tensor(SOFT_GAIN * error).exp())

    def update_movement(self, sparsity: float) -> None:
        scores = [t.param.scores for t in self.targets]
        weights = [_original(t).detach().abs() for t in self.targets]
        self._set(masks_by_score(scores, sparsity, self.cfg.scope, weights), zero=False)
        self.current = sparsity

    def reset_scores_gradient(self) -> None:
        """Forget what a pass before training added to the scores' gradient (the trainer's
        probe for unused parameters runs a backward through the masks)."""
        with torch.no_grad():
            for t in self.targets:
                if t.param.movement:
                    t.param.delta.zero_()

    def accumulate(self, world: int) -> None:
        """Move the scores by this step's −W·∂L/∂W' (an Adam step; the gradient averaged
        across torchrun processes first, as DDP averages the weights' gradients)."""
        with torch.no_grad():
            for t in self.targets:
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(t.param.delta)
                    t.param.delta.div_(world)
            l1 = 0.0
            if self.soft:
                l1 = self._soft_l1()
                if l1 > 0:
                    self._set_l1(l1)
            for t in self.targets:
                t.param.score_step(l1)

    def layer_sparsity(self) -> dict[str, float]:
        return {t.name: round(1 - float(t.param.mask.mean()), 4) for t in self.targets}


class ScheduleCallback(Callback):
    """Trainer callback: the cubic schedule from epoch `start` to epoch `end` (fractions
    allowed). Magnitude masks are updated every `interval` steps and when it ends; movement
    masks follow the scores at every step, during the schedule and after it (the scores take
    a step every step: a mask recomputed only every few steps lets the weights it dropped
    come back in bulk, as the authors' code, which takes the top-k at every forward, does
    not). An epoch before the schedule ends is not eligible as the result."""

    def __init__(self, sparsifier: Sparsifier, start: float, end: float, interval: int) -> None:
        self.s, self.start_epoch, self.end_epoch, self.interval = sparsifier, start, end, interval

    def _bounds(self, trainer) -> tuple[int, int]:
        per = trainer.steps_per_epoch
        start = int(round(self.start_epoch * per))
        return start, max(start + 1, int(round(self.end_epoch * per)))

    def on_step(self, trainer, step: int) -> None:
        start, end = self._bounds(trainer)
        done = step + 1  # optimizer steps taken
        target = cubic(done, start, end, self.s.sparsity)
        if self.s.movement:
            self.s.scheduled = target if done >= start else None
            self.s.accumulate(trainer.world)
        if done < start or (done > end and not self.s.movement):
            return
        if self.s.movement or done == end or (done - start) % self.interval == 0:
            if self.s.soft:
                self.s.update_soft()
            elif self.s.movement:
                self.s.update_movement(target)
            else:
                self.s.update_magnitude(target)

    def on_epoch_end(self, trainer, log) -> None:
        if self.s.soft and self.s.scheduled is not None:
            trainer.say(f"soft movement: {self.s.current:.1%} of the weights masked, schedule "
                        f"{self.s.scheduled:.1%}, λ {self.s.l1:.3g}")  # fmt: skip

    def on_train_begin(self, trainer) -> None:
        if self.s.movement:
            self.s.reset_scores_gradient()

    def selectable(self, trainer, epoch: int) -> bool:
        """Whether the weights after `epoch` (from 1) are at the final sparsity: the schedule
        has ended, and soft movement's masks, which lag its schedule, are within
        SOFT_TOLERANCE of it (or it is the last epoch: the run's result all the same)."""
        ended = epoch * trainer.steps_per_epoch >= self._bounds(trainer)[1]
        if not ended or not self.s.soft:
            return ended
        near = abs(self.s.current - self.s.sparsity) <= SOFT_TOLERANCE
        return near or epoch == trainer.cfg.epochs

    def describe(self) -> dict[str, Any]:
        interval = 1 if self.s.movement else self.interval
        out = {"kind": "cubic", "start_epoch": self.start_epoch, "end_epoch": self.end_epoch,
               "mask_interval_steps": interval}  # fmt: skip
        if self.s.soft:
            reached = self.s.masked_fraction()  # the masks kept: the best epoch's
            out.update(soft_threshold=SOFT_THRESHOLD, final_l1=self.s.l1,
                       reached_sparsity=round(reached, 4))  # fmt: skip
        return out
