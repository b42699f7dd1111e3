"""Epoch checkpoints of a distillation run: student weights and optimizer state in
safetensors (no pickle), the rest in JSON, each epoch written atomically; the latest and the
best are kept."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesmith.toolchain.core.files import atomic_dir, write_json

CHECKPOINT_RE = re.compile(r"^epoch-(\d{4})$")
STUDENT_FILE = "student.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


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


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
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


def load_optimizer(opt: torch.optim.Optimizer, path: Path, rest: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    state: dict[int, dict[str, Any]] = {}
    for key, t in load_file(str(path)).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = t
    for key, v in rest["scalars"].items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def write_checkpoint(
    directory: Path,
    epoch: int,
    student: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write epoch `epoch`'s checkpoint; keep it and the best one. Returns its directory."""
    from safetensors.torch import save_model

    with atomic_dir(directory / f"epoch-{epoch:04d}") as tmp:
        save_model(student, str(tmp / STUDENT_FILE))  # handles tied weights
        rest = save_optimizer(opt, tmp / OPTIMIZER_FILE)
        write_json(tmp / STATE_FILE, {**state, "optimizer": rest})
    keep = {f"epoch-{epoch:04d}", f"epoch-{state['best_epoch']:04d}"}
    for p in directory.iterdir():
        if CHECKPOINT_RE.match(p.name) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    return directory / f"epoch-{epoch:04d}"
