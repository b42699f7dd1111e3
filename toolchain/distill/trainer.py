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
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from calibration.sources import Dataset
from toolchain.core.errors import InvalidInput
from toolchain.core.files import atomic_dir, write_json
from toolchain.distill.losses import LOSS_KINDS, embedding_loss, hidden_state_loss, logits_loss
from toolchain.distill.students import capture_outputs, set_dropout

CHECKPOINT_RE = re.compile(r"^epoch-(\d{4})$")
STUDENT_FILE = "student.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
BUCKET_BATCHES = 16  # batches sorted by length together (text); see _batches


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (its hash guards --resume)."""

    epochs: int
    lr: float
    batch_size: int = 64  # global, across processes
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
    stopped_after: int | None = None  # set when stop_after cut the run short

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Pair:
    """A student and its teacher, both returning named outputs (see students.py)."""

    student: nn.Module
    teacher: nn.Module
    # (student layer, teacher layer) pairs whose outputs the hidden-state loss matches
    layers: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def close_distributed() -> None:
    """Leave the process group together: a rank that tears gloo down while another still
    talks to it can abort at exit. If a rank failed, torchrun stops the others anyway."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The last complete epoch checkpoint (complete by construction: written atomically)."""
    if not Path(directory).is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in Path(directory).iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return max(found) if found else None


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _to_tensors(feeds: dict[str, np.ndarray], idx: np.ndarray, device: torch.device) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v[idx])).to(device) for k, v in feeds.items()}


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    per = math.ceil(n / world)
    return min(n, rank * per), min(n, (rank + 1) * per)


def _gather_rows(mine: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (see _shard) into the full n rows."""
    if world == 1:
        return mine
    per = math.ceil(n / world)
    padded = torch.zeros((per, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[: len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, _shards(n, world), strict=True)])


def _shards(n: int, world: int) -> list[tuple[int, int]]:
    return [_shard(n, r, world) for r in range(world)]


def _sum_all(values: list[float], device: torch.device, world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def outputs_of(
    model: nn.Module,
    data: Dataset,
    output: str,
    *,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """`output` of `model` on every sample of `data`, each process computing its own shard.

    Text runs in order of length, so that each batch is cut to sentences of similar length
    (prepare); in data order every batch of 256 would be padded to its longest sentence.
    """
    device = device or torch.device("cpu")
    lo, hi = _shard(len(data), rank, world)
    model.eval()
    order = np.arange(lo, hi)
    lengths = model.lengths(data.feeds)
    if lengths is not None:
        order = order[np.argsort(np.asarray(lengths)[lo:hi], kind="stable")]
    chunks = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunks.append(model(**model.prepare(_to_tensors(data.feeds, idx, device)))[output])
    if chunks:
        done = torch.cat(chunks)
        mine = torch.empty_like(done)
        mine[torch.from_numpy(order - lo).to(done.device)] = done  # back to data order
    else:  # more processes than samples: this rank's shard is empty
        probe = model(**model.prepare(_to_tensors(data.feeds, np.arange(1), device)))[output]
        mine = probe[:0]
    return _gather_rows(mine.float(), len(data), world)


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


def _freeze_unused(student: nn.Module, data: Dataset, output: str, device: torch.device) -> int:
    """Stop training parameters the compared output does not depend on; returns how many.

    A sentence-transformers BERT computes a pooler the embedding never uses; DDP requires
    every trained parameter to get a gradient (else find_unused_parameters, which costs a
    graph traversal on every step), so one probe pass finds them once.
    """
    student.train()
    feeds = student.prepare(_to_tensors(data.feeds, np.arange(min(2, len(data))), device))
    student(**feeds)[output].float().sum().backward()
    frozen = 0
    for p in student.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen += 1
        p.grad = None
    return frozen


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Optimizer tensors into safetensors (no pickle); returns the rest for state.json."""
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{idx}.{k}"] = v
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, rest: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    state: dict[int, dict[str, Any]] = {}
    for key, t in load_file(str(path)).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = t
    for key, v in rest["scalars"].items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def _write_checkpoint(
    directory: Path,
    epoch: int,
    student: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    from safetensors.torch import save_model

    with atomic_dir(directory / f"epoch-{epoch:04d}") as tmp:
        save_model(student, str(tmp / STUDENT_FILE))  # handles tied weights
        rest = _save_optimizer(opt, tmp / OPTIMIZER_FILE)
        write_json(tmp / STATE_FILE, {**state, "optimizer": rest})
    keep = {f"epoch-{epoch:04d}", f"epoch-{state['best_epoch']:04d}"}
    for p in directory.iterdir():
        if CHECKPOINT_RE.match(p.name) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _batches(
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


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Cosine decay to zero over the run; a function of the step so resume needs no state."""
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def train(
    pair: Pair,
    train_data: Dataset,
    eval_data: Dataset,
    cfg: TrainConfig,
    *,
    checkpoints: Path,
    fingerprint: str,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Distil `pair.teacher` into `pair.student` (in place: it ends with the best weights).

    `fingerprint` identifies everything that decides the result besides `cfg` (teacher,
    student, data); a checkpoint made under another fingerprint is refused on resume.
    `stop_after` ends the run after that many epochs, as a kill would (tests, benchmarks).
    Call init_distributed() first to train across the processes torchrun started.
    """
    from safetensors.torch import load_model

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    say = log if (log is not None and rank == 0) else (lambda _m: None)
    device = device_for_rank()
    checkpoints = Path(checkpoints)
    if cfg.batch_size < world:
        raise InvalidInput(f"batch_size {cfg.batch_size} is smaller than the {world} processes")
    if len(train_data) < world or len(eval_data) < 1:
        raise InvalidInput(
            f"too little data: {len(train_data)} training, {len(eval_data)} eval samples"
        )
    run_id = hashlib.sha256(f"{fingerprint}\0{sorted(asdict(cfg).items())}".encode()).hexdigest()

    student, teacher = pair.student.to(device), pair.teacher.to(device)
    teacher.eval().requires_grad_(False)
    if cfg.dropout is not None:
        set_dropout(student, cfg.dropout)
    torch.manual_seed(cfg.seed)
    frozen = _freeze_unused(student, train_data, cfg.output, device)
    if frozen:
        say(f"{frozen} student parameter tensors do not affect '{cfg.output}'; left untrained")
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True,  # one kernel over all tensors: the per-tensor loop dominated CPU steps
    )

    history: list[EpochLog] = []
    best_epoch, best_metric, start_epoch, resumed_after = 0, -math.inf, 0, None
    found = latest_checkpoint(checkpoints)
    if found and not resume:
        raise InvalidInput(
            f"{checkpoints} holds checkpoints of an interrupted run (epoch {found[0]} done); "
            "pass --resume (in a recipe: resume = true) to continue it, or delete that folder "
            "to start over"
        )
    if found:
        epoch, path = found
        import json

        state = json.loads((path / STATE_FILE).read_text())
        if state.get("run_id") != run_id:
            raise InvalidInput(
                f"{path}: made by a run with another teacher, student, data or settings; "
                "resume needs the same ones (or delete the folder to start over)"
            )
        load_model(student, str(path / STUDENT_FILE), device=str(device))
        _load_optimizer(opt, path / OPTIMIZER_FILE, state["optimizer"])
        history = [EpochLog(**h) for h in state["history"]]
        best_epoch, best_metric = state["best_epoch"], state["best_metric"]
        start_epoch = resumed_after = epoch
        say(f"resuming after epoch {epoch}/{cfg.epochs} (best so far: epoch {best_epoch})")
    elif resume:
        say(f"nothing to resume in {checkpoints}; starting at epoch 1")

    # Teacher outputs are computed once, not every epoch (the data are fixed), unless the
    # hidden-state loss needs the teacher's intermediate layers on every step.
    per_sample_teacher = cfg.hidden_weight > 0
    teacher_eval = outputs_of(
        teacher,
        eval_data,
        cfg.output,
        batch_size=cfg.eval_batch_size,
        rank=rank,
        world=world,
        device=device,
    )
    teacher_train = None
    if not per_sample_teacher:
        teacher_train = outputs_of(
            teacher,
            train_data,
            cfg.output,
            batch_size=cfg.eval_batch_size,
            rank=rank,
            world=world,
            device=device,
        )
    metric_name, _ = evaluate(teacher_eval, teacher_eval, eval_data.labels, cfg.loss)
    teacher_metric = (
        evaluate(teacher_eval, teacher_eval, eval_data.labels, cfg.loss)[1]
        if metric_name == "accuracy"
        else None
    )

    model: nn.Module = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = torch.utils.data.DistributedSampler(
        range(len(train_data)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    local_batch = max(1, cfg.batch_size // world)
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    total_steps = steps_per_epoch * cfg.epochs
    labels = train_data.labels if cfg.loss == "soft" else None
    lengths = student.lengths(train_data.feeds)

    captured_s, captured_t, unhook = [], [], lambda: None
    if cfg.hidden_weight > 0:
        if not pair.layers:
            raise InvalidInput(
                "hidden_weight needs a student derived from the teacher's layers (--student-layers)"
            )
        captured_s, unhook_s = capture_outputs([s for s, _ in pair.layers])
        captured_t, unhook_t = capture_outputs([t for _, t in pair.layers])

        def unhook() -> None:
            unhook_s()
            unhook_t()

    from toolchain.progress import track

    stopped_after = None  # set when a test stops the run early (stop_after)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            torch.manual_seed(cfg.seed * 100003 + epoch * world + rank)  # dropout
            order = np.fromiter(iter(sampler), dtype=np.int64)
            batches = _batches(order, local_batch, lengths, cfg.seed + epoch)
            student.train()
            sums: dict[str, float] = {}
            seen = 0
            start = time.perf_counter()
            steps = batches
            if rank == 0 and sys.stderr.isatty():  # the bar; CI logs get the epoch line only
                steps = track(batches, len(batches), f"epoch {epoch + 1}/{cfg.epochs}")
            for step, idx in enumerate(steps):
                for g in opt.param_groups:
                    g["lr"] = _lr_at(cfg, epoch * steps_per_epoch + step, total_steps)
                feeds = student.prepare(_to_tensors(train_data.feeds, idx, device))
                captured_s.clear()
                captured_t.clear()
                out = model(**feeds)[cfg.output]
                if per_sample_teacher:
                    with torch.no_grad():
                        target = teacher(**feeds)[cfg.output]
                else:
                    target = teacher_train[torch.from_numpy(idx).to(device)]
                if cfg.loss == "soft":
                    y = None if labels is None else torch.from_numpy(labels[idx]).to(device)
                    loss, parts = logits_loss(
                        out, target, y, temperature=cfg.temperature, alpha=cfg.alpha
                    )
                else:
                    loss, parts = embedding_loss(
                        out, target, mse_weight=cfg.mse_weight, cos_weight=cfg.cos_weight
                    )
                if cfg.hidden_weight > 0:
                    hidden = hidden_state_loss(captured_s, captured_t)
                    loss = loss + cfg.hidden_weight * hidden
                    parts["hidden"] = float(hidden.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                seen += len(idx)
            seconds = time.perf_counter() - start
            keys = sorted(sums)
            totals = _sum_all([sums[k] for k in keys] + [seen, seconds], device, world)
            means = {k: v / totals[-2] for k, v in zip(keys, totals, strict=False)}
            student_eval = outputs_of(
                student,
                eval_data,
                cfg.output,
                batch_size=cfg.eval_batch_size,
                rank=rank,
                world=world,
                device=device,
            )
            _, metric = evaluate(student_eval, teacher_eval, eval_data.labels, cfg.loss)
            improved = metric >= best_metric  # a tie goes to the later, longer-trained epoch
            if improved:
                best_epoch, best_metric = epoch + 1, metric
            slowest = totals[-1] / world  # mean over processes of the training seconds
            history.append(
                EpochLog(
                    epoch + 1,
                    means.pop("loss"),
                    means,
                    metric,
                    slowest,
                    len(train_data) / slowest if slowest > 0 else 0.0,
                    improved,
                )
            )
            h = history[-1]
            say(
                f"epoch {h.epoch}/{cfg.epochs}  loss {h.loss:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in h.parts.items())
                + f"  eval {metric_name} {metric:.4f}{'  (best)' if improved else ''}"
                + f"  {h.seconds:.1f}s, {h.samples_per_s:.0f} samples/s"
            )
            if rank == 0:
                _write_checkpoint(
                    checkpoints,
                    epoch + 1,
                    student,
                    opt,
                    {
                        "run_id": run_id,
                        "epoch": epoch + 1,
                        "best_epoch": best_epoch,
                        "best_metric": best_metric,
                        "history": [asdict(x) for x in history],
                    },
                )
            if world > 1:
                dist.barrier()  # no process runs ahead of the checkpoint it may resume from
            if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < cfg.epochs:
                stopped_after = epoch + 1
                break
    finally:
        unhook()
    return _finish(
        student,
        checkpoints,
        best_epoch,
        history,
        metric_name,
        teacher_metric,
        best_metric,
        world,
        device,
        resumed_after,
        stopped_after=stopped_after,
    )


def _finish(
    student: nn.Module,
    checkpoints: Path,
    best_epoch: int,
    history: list[EpochLog],
    metric_name: str,
    teacher_metric: float | None,
    best_metric: float,
    world: int,
    device: torch.device,
    resumed_after: int | None,
    stopped_after: int | None = None,
) -> TrainResult:
    from safetensors.torch import load_model

    digest = weights_digest(student)
    digests = [digest]
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, digest)
    # The student ends with the best epoch's weights, not the last epoch's.
    load_model(
        student, str(checkpoints / f"epoch-{best_epoch:04d}" / STUDENT_FILE), device=str(device)
    )
    if world > 1:
        dist.barrier()  # every process has read the checkpoint before rank 0 may remove it
    student.eval()
    return TrainResult(
        metric_name,
        teacher_metric,
        best_epoch,
        best_metric,
        history,
        world,
        digests,
        resumed_after,
        stopped_after,
    )
