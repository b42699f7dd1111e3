"""Data parallelism for distillation: the process group torchrun describes, each process's
shard of the data, and the collectives that put the shards back together."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgesmith.calibration.sources import Dataset


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


def to_tensors(feeds: dict[str, np.ndarray], idx: np.ndarray, device: torch.device) -> dict:
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


def sum_all(values: list[float], device: torch.device, world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


@dataclass(frozen=True)
class Placement:
    """Where a computation runs: this process's rank among `world` torchrun processes, and
    its device."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None


@torch.no_grad()
def outputs_of(
    model: nn.Module, data: Dataset, output: str, batch_size: int, where: Placement = Placement()
) -> torch.Tensor:
    """`output` of `model` on every sample of `data`, each process computing its own shard.

    Text runs in order of length, so that each batch is cut to sentences of similar length
    (prepare); in data order every batch of 256 would be padded to its longest sentence.
    """
    rank, world, device = where.rank, where.world, where.device or torch.device("cpu")
    lo, hi = _shard(len(data), rank, world)
    model.eval()
    order = np.arange(lo, hi)
    lengths = model.lengths(data.feeds)
    if lengths is not None:
        order = order[np.argsort(np.asarray(lengths)[lo:hi], kind="stable")]
    chunks = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunks.append(model(**model.prepare(to_tensors(data.feeds, idx, device)))[output])
    if chunks:
        done = torch.cat(chunks)
        mine = torch.empty_like(done)
        mine[torch.from_numpy(order - lo).to(done.device)] = done  # back to data order
    else:  # more processes than samples: this rank's shard is empty
        probe = model(**model.prepare(to_tensors(data.feeds, np.arange(1), device)))[output]
        mine = probe[:0]
    return _gather_rows(mine.float(), len(data), world)
