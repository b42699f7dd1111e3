"""Students, and one calling convention for students and teachers alike.

A student is either a user's architecture (`package.module:factory`, trained from its own
initialisation), or a transformer encoder derived from its teacher by keeping K of its layers,
initialised from the teacher's weights as DistilBERT was. A derived student keeps the
teacher's tokenizer and config files, so it exports exactly like the teacher.

Teachers and students are wrapped so that `model(**feeds)` returns a dict of named outputs,
named as in the exported ONNX; the losses compare outputs by name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.models.source import PICKLE_SUFFIXES, import_factory

# Teacher files a derived student does not inherit: its weights (the student writes its own),
# its config (rewritten with the new depth) and its model card (it describes the teacher).
NOT_INHERITED = {"config.json", "README.md", ".gitattributes", "manifest.json"}
MASK_INPUT = "attention_mask"  # Hugging Face's name for the padding mask of text inputs


def parameter_count(module: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def student_from_factory(ref: str) -> nn.Module:
    _, factory = import_factory(ref)
    try:
        net = factory()
    except TypeError as e:
        raise InvalidInput(
            f"student factory '{ref}' must be callable without arguments ({e})"
        ) from None
    if not isinstance(net, nn.Module):
        raise InvalidInput(
            f"student factory '{ref}' returned {type(net).__name__}, not a torch.nn.Module"
        )
    return net


def default_layers(n: int, k: int) -> list[int]:
    """K of N layers, evenly spaced, keeping the first and the last.

    For 12 → 6 this gives [0, 2, 4, 7, 9, 11], the layers DistilBERT's extraction script took
    from BERT-base; for 6 → 3, [0, 2, 5].
    """
    if not 1 <= k <= n:
        raise InvalidInput(f"student layers: K must be between 1 and {n} (the teacher's), got {k}")
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def layer_stack(model: nn.Module, n: int) -> tuple[str, nn.ModuleList]:
    """The model's one stack of N repeated layers (BERT: encoder.layer), found by shape.

    Searching by shape instead of by attribute name keeps model families out of this code.
    """
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and len({type(c) for c in m}) == 1
    ]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(f for f, _ in found)})"
        raise InvalidInput(
            f"cannot derive a student by layers: found {what} stacks of {n} layers "
            "(expected exactly one, as in an encoder); name a --student factory instead"
        )
    return found[0]


def hidden_layers(model: nn.Module) -> int:
    n = getattr(_config(model), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise InvalidInput(
            "cannot derive a student by layers: the model's config has no num_hidden_layers"
        )
    return n


def keep_layers(model: nn.Module, keep: list[int]) -> nn.ModuleList:
    """Drop every layer not in `keep` (in place); the config says the new depth.

    Returns the kept layers, in order: student layer i is teacher layer keep[i].
    """
    n = hidden_layers(model)
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= n:
        raise InvalidInput(
            f"keep_layers {keep}: expected increasing, distinct layer indices in 0..{n - 1}"
        )
    name, stack = layer_stack(model, n)
    kept = nn.ModuleList(stack[i] for i in keep)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], kept)
    for cfg in {id(c): c for c in _configs(model)}.values():
        if getattr(cfg, "num_hidden_layers", None) == n:
            cfg.num_hidden_layers = len(keep)
    return kept


def _configs(model: nn.Module) -> list[Any]:
    return [
        m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "to_dict")
    ]


def _config(model: nn.Module) -> Any:
    configs = _configs(model)
    return configs[0] if configs else None


def pretrained_part(model: nn.Module) -> nn.Module:
    """The transformers model inside `model` (itself, or e.g. a sentence-transformers module's)."""
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            return m
    raise InvalidInput(f"{type(model).__name__} holds no transformers PreTrainedModel to save")


def save_hf_student(model: nn.Module, teacher_dir: Path, out: Path) -> None:
    """Write the student as a Hugging Face folder beside the teacher's other files.

    config.json and model.safetensors come from the student; tokenizer files, pooling and
    other sentence-transformers module files are copied from the teacher unchanged.
    """
    teacher_dir = Path(teacher_dir)
    for p in sorted(teacher_dir.iterdir()):
        if p.name in NOT_INHERITED or p.suffix in (".safetensors", *PICKLE_SUFFIXES):
            continue
        if p.name.endswith(".index.json"):  # a sharded checkpoint's index names teacher files
            continue
        if p.is_dir():
            shutil.copytree(p, out / p.name)
        else:
            shutil.copy2(p, out / p.name)
    pretrained_part(model).save_pretrained(str(out), safe_serialization=True)


class TorchOutputs(nn.Module):
    """A plain module called with positional inputs, returning its outputs by name."""

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.module = module
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def forward(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        from edgesmith.toolchain.models.torch import flatten_outputs

        out = flatten_outputs(self.module(*(feeds[n] for n in self.inputs)))
        if len(out) != len(self.outputs):
            raise InvalidInput(
                f"model returns {len(out)} outputs, expected {len(self.outputs)} ({self.outputs})"
            )
        return dict(zip(self.outputs, out, strict=True))

    def prepare(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return feeds

    def lengths(self, feeds: dict[str, Any]) -> None:
        return None  # fixed-size inputs: nothing to group by length


class HfOutputs(nn.Module):
    """A Hugging Face model called as it is exported (models/hf.py HfSignature): the task's
    inputs by name, its outputs by name (for sentence-transformers: the pooled, normalised
    `sentence_embedding`), so the loss is computed on exactly what will be exported."""

    def __init__(self, model: nn.Module, signature: Any) -> None:
        super().__init__()
        self.model = model
        self.signature = signature
        self.outputs = list(signature.outputs)
        self.inputs = list(signature.inputs)

    def forward(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.signature.call(self.model, feeds)

    def lengths(self, feeds: dict[str, Any]) -> Any:
        """Tokens per sample (from the padding mask), or None when the inputs have no mask."""
        mask = feeds.get(MASK_INPUT)
        return None if mask is None or mask.ndim != 2 else mask.sum(1)

    def prepare(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop sequence positions that are padding in every row of the batch.

        Text is tokenized to a fixed length (often 128) while most sentences are far shorter;
        the masked positions change no output, and skipping them is most of the speed on CPU.
        """
        mask = feeds.get(MASK_INPUT)
        if mask is None or mask.ndim != 2:
            return feeds
        used = mask.bool().any(0)
        if bool(used.all()):
            return feeds
        return {
            k: (v[:, used] if v.ndim == 2 and v.shape == mask.shape else v)
            for k, v in feeds.items()
        }


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout in `model` to probability `p`; returns how many were set.

    nn.Dropout modules, and the probability attention modules pass to
    scaled_dot_product_attention themselves (`dropout_prob` in Hugging Face's BERT family,
    which bypasses nn.Dropout).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
            n += 1
        elif isinstance(getattr(m, "dropout_prob", None), float):
            m.dropout_prob = p
            n += 1
    return n


def capture_outputs(layers: list[nn.Module]) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Record each layer's output (its first element when a tuple) on every forward.

    Returns the list the outputs are appended to, and a function that removes the hooks.
    """
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, _args: Any, out: Any) -> None:
        seen.append(out[0] if isinstance(out, tuple | list) else out)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    return seen, lambda: [h.remove() for h in handles]
