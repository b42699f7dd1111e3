"""The distillation loop, on one process or many (torchrun), with a checkpoint every epoch.

Distributed: under `torchrun --nproc-per-node N` every process runs this same loop on its
shard of each batch, with DistributedDataParallel averaging the gradients (gloo on CPU, nccl
on GPU) and a DistributedSampler sharding the data. `batch_size` is the global batch: each
process takes batch_size / N samples, so one step sees the same samples in the same order at
any N, and N processes make the same optimisation as one.

Checkpoints: after every epoch rank 0 writes `epoch-NNNN/` (student weights, optimizer state,
history) atomically into the checkpoint directory, keeping only the latest and the best. A
kill loses at most the epoch it interrupted; `resume` continues after the latest complete one.
The learning rate is a function of the step and each epoch's shuffle and dropout are seeded
by the epoch, so a resumed run makes the same model as an uninterrupted one.

The loop is small: the loss is a strategy (`make_loss`), and what else happens during
training hooks in through callbacks (on_step after each optimizer step, on_epoch_end,
on_checkpoint), so pruning can update masks and scores without a copy of the loop. The
process's global random state is put back when training ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgesmith.calibration.sources import Dataset
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.models.students import capture_outputs, set_dropout
from edgesmith.toolchain.training.checkpoints import (
    OPTIMIZER_FILE,
    STATE_FILE,
    STUDENT_FILE,
    latest_checkpoint,
    load_optimizer,
    weights_digest,
    write_checkpoint,
)
from edgesmith.toolchain.training.defaults import MIN_GAIN, RANGE, pick_rate, range_rates
from edgesmith.toolchain.training.losses import LOSS_KINDS, hidden_state_loss, make_loss
from edgesmith.toolchain.training.parallel import (
    Placement,
    close_distributed,
    device_for_rank,
    init_distributed,
    outputs_of,
    sum_all,
    to_tensors,
)
from edgesmith.toolchain.training.steps import epoch_batches, evaluate, freeze_unused, lr_at

__all__ = [
    "Callback", "Pair", "TrainConfig", "TrainResult", "Trainer", "close_distributed",
    "init_distributed", "latest_checkpoint",
]  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (its hash guards --resume)."""

    epochs: int
    lr: float  # the peak rate; with find_lr, the usual one the range test is held near
    batch_size: int = 32  # global, across processes
    find_lr: bool = False  # choose the peak rate by a range test (training/defaults.py)
    patience: int = 0  # stop after this many epochs without improvement (0: never)
    epochs_from: str = "given"  # why this many epochs (training/defaults.py: choose_epochs)
    loss: str = "soft"  # "soft": tempered KL (+ CE on labels); "embedding": MSE + cosine
    output: str = "output"  # the named output the loss compares
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the soft targets; 1 - alpha on the hard labels
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    hidden_weight: float = 0.0  # MSE between matched hidden states (derived students only)
    dropout: float | None = None  # the student's dropout while training; None: as built
    weight_decay: float = 0.01
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise InvalidInput(f"unknown loss '{self.loss}'; available: {', '.join(LOSS_KINDS)}")


@dataclass
class EpochLog:
    epoch: int  # 1-based
    loss: float
    parts: dict[str, float]
    metric: float
    seconds: float  # training only, without evaluation and checkpointing
    samples_per_s: float  # training samples (all processes) per second
    best: bool


@dataclass
class TrainResult:
    metric_name: str  # accuracy (labels), agreement (teacher's top-1, no labels) or cosine
    teacher_metric: float | None  # the teacher's own accuracy on the eval data, when labelled
    best_epoch: int
    best_metric: float
    history: list[EpochLog]
    world_size: int
    rank_digests: list[str]  # sha256 of each process's final weights; all equal under DDP
    resumed_after: int | None = None  # the epoch a resumed run continued after
    stopped_after: int | None = None  # set when the run stopped early (plateau or callback)
    settings: dict[str, Any] = field(default_factory=dict)  # the rate chosen, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Pair:
    """A student and its teacher, both returning named outputs (see students.py)."""

    student: nn.Module
    teacher: nn.Module
    # (student layer, teacher layer) pairs whose outputs the hidden-state loss matches
    layers: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)


class Callback:
    """Hooks into the loop; every method is optional. Return True from on_epoch_end to stop
    the run after that epoch (as a kill would: its checkpoint is written first)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """After the set-up (its probe pass included), before the first step."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """After an optimizer step (global step count `step`, from 0)."""

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> bool | None:
        return None

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After rank 0 wrote the epoch's checkpoint directory `path`."""

    def selectable(self, trainer: Trainer, epoch: int) -> bool:
        """Whether the weights after `epoch` (from 1) may be the run's result (a pruning
        schedule that has not reached its final sparsity says no)."""
        return True


@dataclass
class _Progress:
    """Where the run stands: what a checkpoint holds besides the weights."""

    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf
    start_epoch: int = 0
    resumed_after: int | None = None
    stopped_after: int | None = None
    gain_epoch: int = 0  # the last epoch that improved the best metric by more than MIN_GAIN
    lr: float | None = None  # the peak rate (a resumed run keeps the one its range test chose)
    lr_reason: str = "given"


@dataclass(frozen=True)
class TrainRun:
    """One training run's keeping: where it checkpoints its epochs, its `fingerprint`
    (everything that decides the result besides the TrainConfig: teacher, student, data; a
    checkpoint made under another fingerprint is refused on resume), its log and callbacks."""

    checkpoints: Path
    fingerprint: str
    log: Callable[[str], None] | None = None
    callbacks: Sequence[Callback] = ()


class Trainer:
    """Distil `pair.teacher` into `pair.student` (in place: it ends with the best weights),
    on `data` (training, eval). Call init_distributed() first to train across the processes
    torchrun started.
    """

    def __init__(
        self, pair: Pair, data: tuple[Dataset, Dataset], cfg: TrainConfig, run: TrainRun
    ) -> None:
        (train_data, eval_data), log, fingerprint = data, run.log, run.fingerprint
        self.pair, self.train_data, self.eval_data, self.cfg = pair, train_data, eval_data, cfg
        self.checkpoints, self.callbacks = Path(run.checkpoints), list(run.callbacks)
        self.rank, self.world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        )
        self.say = log if (log is not None and self.rank == 0) else (lambda _m: None)
        self.device = device_for_rank()
        if cfg.batch_size < self.world:
            raise InvalidInput(
                f"batch_size {cfg.batch_size} is smaller than the {self.world} processes"
            )
        if len(train_data) < self.world or len(eval_data) < 1:
            raise InvalidInput(
                f"too little data: {len(train_data)} training, {len(eval_data)} eval samples"
            )
        # what decides the weights (epochs_from is prose about a setting, not one)
        decided = {k: v for k, v in asdict(cfg).items() if k != "epochs_from"}
        key = f"{fingerprint}\0{sorted(decided.items())}"
        self.run_id = hashlib.sha256(key.encode()).hexdigest()
        self.progress = _Progress()

    # -- set-up -------------------------------------------------------------------------
    def _prepare_models(self) -> None:
        cfg, device = self.cfg, self.device
        self.student = self.pair.student.to(device)
        self.teacher = self.pair.teacher.to(device)
        self.teacher.eval().requires_grad_(False)
        if cfg.dropout is not None:
            set_dropout(self.student, cfg.dropout)
        torch.manual_seed(cfg.seed)
        frozen = freeze_unused(self.student, self.train_data, cfg.output, device)
        if frozen:
            self.say(
                f"{frozen} student parameter tensors do not affect '{cfg.output}'; left untrained"
            )
        self.opt = torch.optim.AdamW(
            [p for p in self.student.parameters() if p.requires_grad],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=True,  # one kernel over all tensors: the per-tensor loop dominated CPU steps
        )

    def _resume(self, resume: bool) -> None:
        from safetensors.torch import load_model

        found = latest_checkpoint(self.checkpoints)
        if found and not resume:
            raise InvalidInput(
                f"{self.checkpoints} holds checkpoints of an interrupted run (epoch {found[0]} "
                "done); pass --resume (in a recipe: resume = true) to continue it, or delete "
                "that folder to start over"
            )
        if not found:
            if resume:
                self.say(f"nothing to resume in {self.checkpoints}; starting at epoch 1")
            return
        epoch, path = found
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("run_id") != self.run_id:
            raise InvalidInput(
                f"{path}: made by a run with another teacher, student, data or settings; "
                "resume needs the same ones (or delete the folder to start over)"
            )
        load_model(self.student, str(path / STUDENT_FILE), device=str(self.device))
        load_optimizer(self.opt, path / OPTIMIZER_FILE, state["optimizer"])
        p = self.progress
        p.history = [EpochLog(**h) for h in state["history"]]
        p.best_epoch, p.best_metric = state["best_epoch"], state["best_metric"]
        p.gain_epoch = state.get("gain_epoch", p.best_epoch)
        p.stopped_after = state.get("stopped_after")  # a run that had ended stays ended
        p.lr, p.lr_reason = state.get("lr"), state.get("lr_from", "given")
        p.start_epoch = p.resumed_after = epoch
        self.say(
            f"resuming after epoch {epoch}/{self.cfg.epochs} (best so far: epoch {p.best_epoch})"
        )

    def _outputs(self, model: nn.Module, data: Dataset) -> torch.Tensor:
        where = Placement(self.rank, self.world, self.device)
        return outputs_of(model, data, self.cfg.output, self.cfg.eval_batch_size, where)

    def _teacher_outputs(self) -> None:
        """Teacher outputs are computed once, not every epoch (the data are fixed), unless the
        hidden-state loss needs the teacher's intermediate layers on every step."""
        cfg = self.cfg
        self.teacher_eval = self._outputs(self.teacher, self.eval_data)
        self.teacher_train = None
        if cfg.hidden_weight <= 0:
            self.teacher_train = self._outputs(self.teacher, self.train_data)
        labels = self.eval_data.labels
        self.metric_name, own = evaluate(self.teacher_eval, self.teacher_eval, labels, cfg.loss)
        self.teacher_metric = own if self.metric_name == "accuracy" else None

    def _hidden_hooks(self) -> Callable[[], None]:
        self.captured: tuple[list, list] = ([], [])
        if self.cfg.hidden_weight <= 0:
            return lambda: None
        if not self.pair.layers:
            raise InvalidInput(
                "hidden_weight needs a student derived from the teacher's layers (--student-layers)"
            )
        captured_s, unhook_s = capture_outputs([s for s, _ in self.pair.layers])
        captured_t, unhook_t = capture_outputs([t for _, t in self.pair.layers])
        self.captured = (captured_s, captured_t)

        def unhook() -> None:
            unhook_s()
            unhook_t()

        return unhook

    def _parallel(self) -> None:
        cfg, world = self.cfg, self.world
        self.model: nn.Module = self.student
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.sampler = torch.utils.data.DistributedSampler(
            range(len(self.train_data)), num_replicas=world, rank=self.rank, shuffle=True,
            seed=cfg.seed,
        )  # fmt: skip
        self.local_batch = max(1, cfg.batch_size // world)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.local_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        labels = self.train_data.labels if cfg.loss == "soft" else None
        self.loss = make_loss(cfg, labels, self.device)
        self.lengths = self.student.lengths(self.train_data.feeds)

    # -- the loop -----------------------------------------------------------------------
    def _loss_on(self, model: nn.Module, idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        """The distillation loss of `model` (the student, or its DDP wrapper) on the batch."""
        cfg = self.cfg
        feeds = self.student.prepare(to_tensors(self.train_data.feeds, idx, self.device))
        captured_s, captured_t = self.captured
        captured_s.clear()
        captured_t.clear()
        out = model(**feeds)[cfg.output]
        if self.teacher_train is None:
            with torch.no_grad():
                target = self.teacher(**feeds)[cfg.output]
        else:
            target = self.teacher_train[torch.from_numpy(idx).to(self.device)]
        loss, parts = self.loss(out, target, idx)
        if cfg.hidden_weight > 0:
            hidden = hidden_state_loss(captured_s, captured_t)
            loss = loss + cfg.hidden_weight * hidden
            parts["hidden"] = float(hidden.detach())
        return loss, parts

    def _step(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.progress.lr, step, self.total_steps)
        loss, parts = self._loss_on(self.model, idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for cb in self.callbacks:
            cb.on_step(self, step)
        return loss, parts

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], float, float]:
        """One epoch's steps; returns the summed loss parts, samples seen and seconds."""
        from edgesmith.toolchain.core.progress import track

        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100003 + epoch * self.world + self.rank)  # dropout
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        batches = epoch_batches(order, self.local_batch, self.lengths, cfg.seed + epoch)
        self.student.train()
        sums: dict[str, float] = {}
        seen = 0
        start = time.perf_counter()
        steps = batches
        if self.rank == 0 and sys.stderr.isatty():  # the bar; CI logs get the epoch line only
            steps = track(batches, len(batches), f"epoch {epoch + 1}/{cfg.epochs}")
        for i, idx in enumerate(steps):
            loss, parts = self._step(idx, epoch * self.steps_per_epoch + i)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            seen += len(idx)
        return sums, seen, time.perf_counter() - start

    def _end_epoch(self, epoch: int, sums: dict[str, float], seen: float, seconds: float):
        """Evaluate, log and checkpoint the epoch; True when a callback stops the run."""
        p, cfg = self.progress, self.cfg
        keys = sorted(sums)
        totals = sum_all([sums[k] for k in keys] + [seen, seconds], self.device, self.world)
        means = {k: v / totals[-2] for k, v in zip(keys, totals, strict=False)}
        student_eval = self._outputs(self.student, self.eval_data)
        _, metric = evaluate(student_eval, self.teacher_eval, self.eval_data.labels, cfg.loss)
        # a tie goes to the later, longer-trained epoch
        eligible = all(cb.selectable(self, epoch + 1) for cb in self.callbacks)
        improved = eligible and metric >= p.best_metric
        if eligible and (metric > p.best_metric + MIN_GAIN or not p.gain_epoch):
            p.gain_epoch = epoch + 1
        if improved:
            p.best_epoch, p.best_metric = epoch + 1, metric
        slowest = totals[-1] / self.world  # mean over processes of the training seconds
        rate = len(self.train_data) / slowest if slowest > 0 else 0.0
        h = EpochLog(epoch + 1, means.pop("loss"), means, metric, slowest, rate, improved)
        p.history.append(h)
        self.say(
            f"epoch {h.epoch}/{cfg.epochs}  loss {h.loss:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in h.parts.items())
            + f"  eval {self.metric_name} {metric:.4f}{'  (best)' if improved else ''}"
            + f"  {h.seconds:.1f}s, {h.samples_per_s:.0f} samples/s"
        )
        last = epoch + 1 >= cfg.epochs
        plateau = cfg.patience > 0 and p.gain_epoch and epoch + 1 - p.gain_epoch >= cfg.patience
        plateau = bool(plateau) and not last
        if plateau:
            self.say(f"no gain over {cfg.patience} epochs since epoch {p.gain_epoch}: stopping")
        if self.rank == 0:
            state = {
                "run_id": self.run_id,
                "epoch": epoch + 1,
                "best_epoch": p.best_epoch,
                "best_metric": p.best_metric,
                "gain_epoch": p.gain_epoch,
                "stopped_after": epoch + 1 if plateau else None,
                "lr": p.lr,
                "lr_from": p.lr_reason,
                "history": [asdict(x) for x in p.history],
            }
            path = write_checkpoint(self.checkpoints, epoch + 1, self.student, self.opt, state)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        if self.world > 1:
            dist.barrier()  # no process runs ahead of the checkpoint it may resume from
        stop = any([bool(cb.on_epoch_end(self, h)) for cb in self.callbacks])
        return stop or plateau

    def fit(self, resume: bool = False) -> TrainResult:
        # the seeds below are the run's own; the process's random state is put back after
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._prepare_models()
            self._resume(resume)
            self._teacher_outputs()
            self._parallel()
            unhook = self._hidden_hooks()
            try:
                self._choose_lr()
                for cb in self.callbacks:
                    cb.on_train_begin(self)
                for epoch in range(self.progress.start_epoch, self.cfg.epochs):
                    if self.progress.stopped_after:  # resumed after the run had stopped
                        break
                    stop = self._end_epoch(epoch, *self._train_epoch(epoch))
                    if stop and epoch + 1 < self.cfg.epochs:
                        self.progress.stopped_after = epoch + 1
                        break
            finally:
                unhook()
            return self._finish()

    def _finish(self) -> TrainResult:
        from safetensors.torch import load_model

        p, world = self.progress, self.world
        digest = weights_digest(self.student)
        digests = [digest]
        if world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, digest)
        # The student ends with the best epoch's weights, not the last epoch's.
        best = self.checkpoints / f"epoch-{p.best_epoch:04d}" / STUDENT_FILE
        load_model(self.student, str(best), device=str(self.device))
        if world > 1:
            dist.barrier()  # every process has read the checkpoint before rank 0 may remove it
        self.student.eval()
        return TrainResult(
            self.metric_name, self.teacher_metric, p.best_epoch, p.best_metric, p.history,
            world, digests, p.resumed_after, p.stopped_after,
            {"lr": p.lr, "lr_from": p.lr_reason, "epochs": self.cfg.epochs,
             "epochs_from": self.cfg.epochs_from, "patience": self.cfg.patience},
        )  # fmt: skip

    # -- the learning rate ---------------------------------------------------------------
    def _choose_lr(self) -> None:
        """The peak rate: given, kept from the run resumed, or by the range test (rank 0
        runs it, every process takes its choice)."""
        p, cfg = self.progress, self.cfg
        if p.lr is not None:
            return
        if not cfg.find_lr:
            p.lr, p.lr_reason = cfg.lr, "given"
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # every process's RNG as if it had not run
            chosen, reason = self._range_test() if self.rank == 0 else (0.0, "")
        if self.world > 1:
            box = [chosen, reason]
            dist.broadcast_object_list(box, src=0, device=self.device)
            chosen, reason = box
        p.lr, p.lr_reason = float(chosen), reason
        self.say(f"learning rate {p.lr:.3g}: {reason}")

    def _range_test(self) -> tuple[float, str]:
        """Smith's range test on a copy of the run's start (training/defaults.py); the
        student's state (weights, masks, scores, norms' statistics) is put back after it."""
        import copy

        cfg = self.cfg
        saved = copy.deepcopy(self.student.state_dict())
        params = [p for p in self.student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=RANGE[0], weight_decay=cfg.weight_decay)
        order = np.random.default_rng(cfg.seed + 7919).permutation(len(self.train_data))
        batches = epoch_batches(order, cfg.batch_size, self.lengths, cfg.seed)
        rates, losses = range_rates(), []
        self.student.train()
        for i, rate in enumerate(rates):
            for g in opt.param_groups:
                g["lr"] = rate
            loss, _ = self._loss_on(self.student, batches[i % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
        self.student.load_state_dict(saved)
        for q in params:
            q.grad = None
        return pick_rate(rates, losses, cfg.lr)
