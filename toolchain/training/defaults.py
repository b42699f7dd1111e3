"""What a training run (distill; prune's recovery) takes when the user leaves it out, and why:

- **epochs** from the data size: enough epochs for about AUTO_STEPS optimizer steps (scaled by
  the stage: prune's recovery by how much it removes), between MIN_EPOCHS and MAX_EPOCHS;
- **the learning rate** from a range test (Smith 2017, "Cyclical learning rates", §3.3): a
  copy of the run's first steps with the rate rising exponentially from RANGE[0] to RANGE[1];
  the rate at which the smoothed loss is lowest, divided by 10 (the rule fastai's lr_find
  popularised), kept within a factor 10 of the stage's usual rate for what is trained (a
  noisy test on a tiny data set must not pick an absurd rate); the usual rate itself when the
  loss never fell (a model that starts at its teacher's optimum, as a gradual pruning run
  does, says nothing about the rate); the model's weights, masks and scores are put back
  after it;
- **when to stop**: when the eval metric has not improved by more than MIN_GAIN for
  `patience` epochs (default: a tenth of the epochs, at least 3), once every callback allows
  the epoch as the result (a pruning schedule must have ended).

The choices and the reasons go into the stage's report (TrainResult.settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTO_STEPS = 2000
MIN_EPOCHS, MAX_EPOCHS = 3, 100
RANGE = (1e-7, 1.0)
RANGE_STEPS = 100
SMOOTHING = 0.95  # the loss's exponential moving average (bias-corrected) in the range test
MIN_RANGE_STEPS = 10  # no divergence is called before; a test shorter than this says nothing
MIN_FALL = 0.2  # a loss that never fell by this fraction of its start says nothing either
MIN_GAIN = 1e-4  # an eval metric this much above the best so far is an improvement


@dataclass(frozen=True)
class Epochs:
    count: int
    reason: str


def budget_scale(sparsity: float) -> float:
    """How much longer a recovery of a model with `sparsity` of it removed runs than one of a
    dense model: 1 + ln(1 / (1 − s)); 1.7× at 50%, 2.6× at 80%, 3.3× at 90%, 4.0× at 95%.
    Each halving of what is left costs about as much recovery as the one before it."""
    return 1.0 + math.log(1.0 / max(1e-6, 1.0 - sparsity))


def choose_epochs(given: int | None, n_train: int, batch: int, scale: float = 1.0) -> Epochs:
    """The epochs given, or enough for AUTO_STEPS × `scale` steps over `n_train` samples."""
    if given is not None:
        return Epochs(given, "given")
    per_epoch = max(1, math.ceil(n_train / batch))
    steps = AUTO_STEPS * scale
    count = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(steps / per_epoch)))
    scaled = f" ({AUTO_STEPS} × {scale:.2f} for the amount pruned)" if scale != 1.0 else ""
    return Epochs(count, (
        f"from the data size: about {steps:.0f} steps{scaled} at {per_epoch} steps an epoch "
        f"({n_train} samples, batch {batch}), within {MIN_EPOCHS}-{MAX_EPOCHS} epochs"
    ))  # fmt: skip


def choose_patience(given: int | None, epochs: int) -> int:
    """Epochs without improvement before the run stops (0: never)."""
    return given if given is not None else max(3, math.ceil(epochs / 10))


def pick_rate(rates: list[float], losses: list[float], prior: float) -> tuple[float, str]:
    """The range test's choice from its (rate, loss) points: a tenth of the rate at the lowest
    smoothed loss, within [prior / 10, prior × 10]."""
    smooth, avg, best = [], 0.0, math.inf
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        value = avg / (1 - SMOOTHING ** (i + 1))
        smooth.append(value)
        best = min(best, value)
        if i >= MIN_RANGE_STEPS and value > 4 * best:  # diverged: later points say nothing
            break
    if not smooth:
        return prior, f"range test: no finite loss; the usual rate {prior:.2g}"
    lowest = min(range(len(smooth)), key=smooth.__getitem__)
    fell = smooth[lowest] < (1 - MIN_FALL) * smooth[0] and smooth[0] > 1e-6 and lowest > 0
    if len(smooth) < MIN_RANGE_STEPS or not fell:
        # e.g. a gradual pruning run starts dense, as its teacher: at its optimum already
        return prior, (
            f"range test: the loss did not fall ({len(smooth)} steps from {smooth[0]:.3g}); "
            f"the usual rate {prior:.2g}"
        )
    at = rates[lowest]
    chosen = min(prior * 10, max(prior / 10, at / 10))
    bound = "" if chosen == at / 10 else f", held within 10× of the usual {prior:.2g}"
    return chosen, (
        f"range test over {len(smooth)} steps ({RANGE[0]:.0e} to {RANGE[1]:.0e}): smoothed loss "
        f"lowest at {at:.2g}; a tenth of it{bound}"
    )


def range_rates(steps: int = RANGE_STEPS) -> list[float]:
    low, high = RANGE
    return [low * (high / low) ** (i / max(1, steps - 1)) for i in range(steps)]

