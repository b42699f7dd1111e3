"""Structured pruning of transformer encoders: attention heads and FFN neurons, removed for
real (smaller Linear layers), so the exported graph is smaller and the engine faster.

The prunable structure is found by shape and data flow, not by attribute names: the model's
one stack of repeated layers (as distill finds it), and in each layer the four
hidden→hidden Linears of attention (the three that read the same input are Q, K and V, the
other is the output projection) and the hidden→I / I→hidden pair of the FFN.

Heads and FFN neurons are removed here: a head's rows of Q, K and V and its columns of the
output projection go together, and the attention module's head count follows. transformers 4
had `prune_heads` for this; transformers 5 removed it, and neither has per-layer FFN sizes.
The folder's config records the kept heads and FFN sizes under `edgesmith_pruning`, and
`rebuild_shapes` (called by models/hf.py: load_hf) gives a freshly loaded model those shapes
before its weights are read. Nothing from the folder is executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgesmith.toolchain.core.errors import InvalidInput

# in config.json: {"ffn": [FFN size per layer], "heads": [[original head indices kept] per layer]}
CONFIG_KEY = "edgesmith_pruning"
# attributes of an attention module that hold its head count or its heads' total width
HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads")
HEAD_WIDTHS = ("all_head_size", "inner_dim")


@dataclass
class EncoderLayer:
    """The prunable parts of one encoder layer."""

    index: int
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear  # the attention's output projection
    ffn_in: nn.Linear  # hidden → intermediate
    ffn_out: nn.Linear  # intermediate → hidden
    ffn_in_name: str
    ffn_out_name: str
    module: nn.Module
    attention_names: tuple[str, str, str, str] = ("", "", "", "")  # Q, K, V, output

    @property
    def ffn_size(self) -> int:
        return self.ffn_in.out_features


def _config(model: nn.Module) -> Any:
    from edgesmith.toolchain.models.students import pretrained_part

    return pretrained_part(model).config


def _stack(model: nn.Module) -> nn.ModuleList:
    from edgesmith.toolchain.models.students import hidden_layers, layer_stack

    return layer_stack(model, hidden_layers(model))[1]


def _calls(layer: nn.Module, linears: list[tuple[str, nn.Linear]], hidden: int):
    """For each Linear of a layer, in the order a forward calls them: (name, input tensor id)."""
    # the tensors themselves are kept until the probe ends: a freed tensor's id can be reused
    # by the next one, which would make two different inputs look like one
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda _m, args, _o, n=n: seen.append((n, args[0])))
        for n, m in linears
    ]
    try:
        with torch.no_grad():
            _probe(layer, hidden)
    finally:
        for h in hooks:
            h.remove()
    return [(n, id(t)) for n, t in seen]


def _probe(layer: nn.Module, hidden: int) -> None:
    """One forward of a layer on a dummy [1, 4, hidden] input (the layer's own signature)."""
    try:
        layer(torch.zeros(1, 4, hidden))
    except (TypeError, RuntimeError, ValueError, AttributeError) as e:  # it needs more inputs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(
            f"nothing prunable here: a {type(layer).__name__} cannot run on its hidden states "
            f"alone ({first})"
        ) from None


def _roles(layer: nn.Module, hidden: int) -> tuple[list, tuple[str, nn.Linear], tuple]:
    """([Q, K, V], O, (FFN in, FFN out)) as (name, Linear), found by shape and data flow:
    Q, K and V are the three Linears from the hidden size that read one tensor; the output
    projection is the next Linear back to the hidden size; the FFN is the Linear from the
    hidden size called after it and the Linear back to the hidden size after that."""
    linears = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    by = dict(linears)
    calls = _calls(layer, linears, hidden)
    reads = {}
    for name, tensor in calls:
        if by[name].in_features == hidden:
            reads.setdefault(tensor, []).append(name)
    qkv = next((names for names in reads.values() if len(names) == 3), None)
    order = [n for n, _ in calls]
    if qkv is None or len(order) != 6:
        raise InvalidInput(
            f"nothing prunable: not an encoder layer ({len(order)} Linears called, expected "
            "Q, K, V, the attention output, and the FFN's two)"
        )
    after = [n for n in order[order.index(qkv[-1]) + 1 :]]
    o, up, down = after
    ok = (
        by[o].out_features == hidden
        and by[o].in_features == by[qkv[0]].out_features
        and by[up].in_features == hidden
        and by[down].in_features == by[up].out_features
        and by[down].out_features == hidden
    )
    if not ok:
        raise InvalidInput("nothing prunable: the layer's Linears do not chain as an encoder's")
    return [(n, by[n]) for n in qkv], (o, by[o]), ((up, by[up]), (down, by[down]))


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """Every layer of the model's encoder stack with its attention and FFN Linears."""
    config = _config(model)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise InvalidInput("nothing prunable: the model's config has no hidden_size")
    out = []
    for i, layer in enumerate(_stack(model)):
        try:
            qkv, (_, o), ((up_name, ffn_in), (down_name, ffn_out)) = _roles(layer, hidden)
        except InvalidInput as e:
            raise InvalidInput(f"layer {i}: {e}") from None
        (qn, q), (kn, k), (vn, v) = qkv
        on = next(n for n, m in layer.named_modules() if m is o)
        out.append(
            EncoderLayer(
                i, q, k, v, o, ffn_in, ffn_out, up_name, down_name, layer, (qn, kn, vn, on)
            )
        )
    return out


def head_counts(model: nn.Module) -> list[int]:
    """Heads left in each layer (the config's count minus what was pruned)."""
    return [len(remaining_heads(model, i)) for i in range(len(_stack(model)))]


def head_dim(model: nn.Module) -> int:
    config = _config(model)
    return config.hidden_size // config.num_attention_heads


def remaining_heads(model: nn.Module, layer: int) -> list[int]:
    """The original indices of a layer's heads still there (the config's numbering)."""
    config = _config(model)
    kept = (getattr(config, CONFIG_KEY, None) or {}).get("heads")
    if kept is not None and layer < len(kept):
        return list(kept[layer])
    # transformers 4's own record, in a folder its prune_heads wrote
    pruned = set((getattr(config, "pruned_heads", {}) or {}).get(layer, []))
    return [h for h in range(config.num_attention_heads) if h not in pruned]


def shrink_heads(layer: EncoderLayer, keep: list[int], dim: int) -> None:
    """Keep the heads at positions `keep` (of those still there): their rows of Q, K, V and
    columns of the output projection; the attention module's head count follows."""
    from transformers.pytorch_utils import prune_linear_layer

    index = torch.cat([torch.arange(p * dim, (p + 1) * dim) for p in sorted(keep)])
    names = layer.attention_names
    for name, lin, axis in zip(
        names, (layer.query, layer.key, layer.value, layer.output), (0, 0, 0, 1), strict=True
    ):
        layer.module.set_submodule(name, prune_linear_layer(lin, index, dim=axis))
    layer.query, layer.key, layer.value, layer.output = (
        layer.module.get_submodule(n) for n in names
    )
    owner = names[0].rpartition(".")[0]
    attention = layer.module.get_submodule(owner) if owner else layer.module
    for attr in HEAD_COUNTS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, len(keep))
    for attr in HEAD_WIDTHS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, len(keep) * dim)


def shrink_ffn(layer: EncoderLayer, keep: torch.Tensor) -> None:
    """Keep the FFN neurons `keep` (indices): rows of ffn_in, columns of ffn_out."""
    from transformers.pytorch_utils import prune_linear_layer

    keep = keep.sort().values.to(torch.long)
    new_in = prune_linear_layer(layer.ffn_in, keep, dim=0)
    new_out = prune_linear_layer(layer.ffn_out, keep, dim=1)
    layer.module.set_submodule(layer.ffn_in_name, new_in)
    layer.module.set_submodule(layer.ffn_out_name, new_out)
    layer.ffn_in, layer.ffn_out = new_in, new_out


def prune_encoder(model: nn.Module, heads: dict[int, list[int]], ffn: dict[int, Any]) -> None:
    """Remove `heads` (layer → original head indices) and keep `ffn` (layer → neuron indices);
    the config records both (pruned_heads, edgesmith_pruning.ffn)."""
    from edgesmith.toolchain.models.students import pretrained_part

    base = pretrained_part(model)
    layers = encoder_layers(model)
    dim = head_dim(model)
    kept = [remaining_heads(model, i) for i in range(len(layers))]
    for i, hs in heads.items():
        if len(set(hs) & set(kept[i])) >= len(kept[i]):
            raise InvalidInput(f"layer {i}: pruning {len(hs)} heads would leave none")
        if hs:
            keep = [p for p, h in enumerate(kept[i]) if h not in set(hs)]
            shrink_heads(layers[i], keep, dim)
            kept[i] = [kept[i][p] for p in keep]
    for i, keep in ffn.items():
        if len(keep) == 0:
            raise InvalidInput(f"layer {i}: pruning every FFN neuron would leave none")
        shrink_ffn(layers[i], torch.as_tensor(keep))
    base.config.pruned_heads = {}  # the record below is what a loader applies
    record = {"ffn": [layer.ffn_size for layer in layers], "heads": kept}
    setattr(base.config, CONFIG_KEY, record)


def rebuild_shapes(model: nn.Module, record: dict[str, Any]) -> None:
    """Give a model loaded from a pruned folder its FFN sizes (values are loaded after)."""
    sizes = record.get("ffn") or []
    layers = encoder_layers(model)
    if len(sizes) != len(layers) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise InvalidInput(
            f"config.json {CONFIG_KEY}.ffn: expected {len(layers)} positive sizes, got {sizes!r}"
        )
    heads = record.get("heads")
    total = _config(model).num_attention_heads
    if heads is not None and (
        not isinstance(heads, list)
        or len(heads) != len(layers)
        or not all(
            isinstance(h, list) and h and all(isinstance(x, int) and 0 <= x < total for x in h)
            for h in heads
        )
    ):
        raise InvalidInput(
            f"config.json {CONFIG_KEY}.heads: expected {len(layers)} non-empty lists of head "
            f"indices below {total}, got {heads!r}"
        )
    dim = head_dim(model)
    for i, (layer, size) in enumerate(zip(layers, sizes, strict=True)):
        if size != layer.ffn_size:
            shrink_ffn(layer, torch.arange(size))
        if heads is not None and len(heads[i]) != layer.query.out_features // dim:
            shrink_heads(layer, list(range(len(heads[i]))), dim)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    from edgesmith.toolchain.models.students import parameter_count

    def count(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    layers = encoder_layers(model)
    attn = sum(count(lay.query, lay.key, lay.value, lay.output) for lay in layers)
    ffn = sum(count(lay.ffn_in, lay.ffn_out) for lay in layers)
    return {"total": parameter_count(model), "attention": attn, "ffn": ffn}
