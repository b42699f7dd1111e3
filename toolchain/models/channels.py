"""Channel pruning of PyTorch models: a convolution's output channels (or a Linear's output
features) removed together with everything that depends on them, so every layer really shrinks.

The dependencies are found from the model's data flow (torch.fx traces the module; nothing
is named by model family): a group is one space of channels and holds
- producers: the Conv2d (groups=1) and Linear layers whose outputs are those channels; an
  elementwise Add/Mul of two such tensors (a residual connection) joins their groups, so a
  residual stack keeps one consistent set of channels;
- dependents: BatchNorm over them, depthwise convolutions passing them through, and the
  consumers that read them: a conv's input channels, a Linear's input features (after a
  Flatten each channel is H×W consecutive features, so its columns go together).
A group that reaches the model's input or output, or passes through an op this analysis does
not know (concat, reshape, a functional conv, a module called twice ...), is left whole: the
pruned model always computes what the analysis understood, or is not pruned there.

torch-pruning (DepGraph) knows many more ops; this small analysis is kept instead because
torch-pruning's documented way to keep a pruned model is torch.save (a pickle, which edgesmith
never loads): here the pruned sizes are recorded in the safetensors file's metadata, and
`rebuild_shapes` gives a freshly built factory model those sizes before its weights load
(reading shapes only, executing nothing).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesmith.toolchain.core.errors import InvalidInput

METADATA_KEY = "edgesmith_pruning"  # in model.safetensors' metadata: {"method", "modules"}

PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
PASS_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6,
    nn.functional.gelu, nn.functional.silu, nn.functional.hardswish, nn.functional.leaky_relu,
    nn.functional.dropout, nn.functional.max_pool2d, nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d, nn.functional.adaptive_max_pool2d,
}  # fmt: skip
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "relu_", "clone"}
JOIN_FUNCTIONS = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, operator.iadd}
JOIN_METHODS = {"add", "mul", "add_", "mul_"}
FLATTEN_FUNCTIONS = {torch.flatten}


@dataclass
class Group:
    """One space of channels and everything that must change with it."""

    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, columns/channel)
    blocked: str | None = None  # why it is left whole

    @property
    def prunable(self) -> bool:
        return self.blocked is None and bool(self.producers)

    def name(self) -> str:
        return "+".join(self.producers)


@dataclass
class _Value:
    """What the analysis knows of one traced value: its channel group and where it lies."""

    group: int
    axis: int  # the channel axis (1 for NCHW, -1 after a Linear)
    factor: int = 1  # consecutive elements per channel along the axis (after a Flatten)


class _Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.parent: list[int] = []

    def new(self, size: int, blocked: str | None = None) -> int:
        self.groups.append(Group(size, blocked=blocked))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def get(self, g: int) -> Group:
        return self.groups[self.find(g)]

    def block(self, g: int, why: str) -> None:
        grp = self.get(g)
        grp.blocked = grp.blocked or why

    def join(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.size != gb.size:
            ga.blocked = gb.blocked = ga.blocked or "channel counts differ where they meet"
        self.parent[rb] = ra
        ga.producers += gb.producers
        ga.norms += gb.norms
        ga.depthwise += gb.depthwise
        ga.consumers += gb.consumers
        ga.blocked = ga.blocked or gb.blocked
        return ra

    def roots(self) -> list[Group]:
        return [g for i, g in enumerate(self.groups) if self.find(i) == i]


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


class _Analysis:
    def __init__(self, module: nn.Module, example: tuple[torch.Tensor, ...]) -> None:
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            self.gm = torch.fx.symbolic_trace(module)
            with torch.no_grad():
                ShapeProp(self.gm).propagate(*example)
        except Exception as e:  # fx raises many types for code it cannot trace
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InvalidInput(
                f"channel pruning needs a module torch.fx can trace ({type(e).__name__}: {first})"
            ) from None
        self.modules = dict(self.gm.named_modules())
        self.g = _Groups()
        self.values: dict[torch.fx.Node, _Value] = {}
        self.calls: dict[str, int] = {}

    def _blocked_value(self, node: torch.fx.Node, why: str) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.values[node] = _Value(self.g.new(shape[1], blocked=why), 1)

    def _inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in node.all_input_nodes if a in self.values]

    def _block_inputs(self, node: torch.fx.Node, why: str) -> None:
        for a in self._inputs(node):
            self.g.block(self.values[a].group, why)

    def run(self) -> list[Group]:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._blocked_value(node, "the model's input")
            elif node.op == "output":
                self._block_inputs(node, "a model output")
            elif node.op == "call_module":
                self._module(node, self.modules[node.target])
            elif node.op == "call_function":
                self._function(node)
            elif node.op == "call_method":
                self._method(node)
            else:  # get_attr: a parameter used directly (functional layers): unknown
                self._blocked_value(node, f"a tensor read directly ({node.target})")
        for name, n in self.calls.items():
            if n > 1:
                for grp in self.g.roots():
                    if name in grp.producers or name in [c for c, _ in grp.consumers]:
                        grp.blocked = grp.blocked or f"{name} is called {n} times"
        return self.g.roots()

    def _unknown(self, node: torch.fx.Node, what: str) -> None:
        self._block_inputs(node, f"read by {what}")
        self._blocked_value(node, f"made by {what}")

    def _pass(self, node: torch.fx.Node, src: torch.fx.Node) -> None:
        if src in self.values:
            self.values[node] = self.values[src]

    def _module(self, node: torch.fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        self.calls[name] = self.calls.get(name, 0) + 1
        src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        val = self.values.get(src) if src is not None else None
        if isinstance(m, nn.Conv2d) and val is not None and val.axis == 1 and val.factor == 1:
            if _is_depthwise(m):
                self.g.get(val.group).depthwise.append(name)
                self.values[node] = val
                return
            if m.groups == 1:
                self.g.get(val.group).consumers.append((name, 1))
                out = self.g.new(m.out_channels)
                self.g.get(out).producers.append(name)
                self.values[node] = _Value(out, 1)
                return
        if isinstance(m, nn.Linear) and val is not None:
            shape = _shape(src)
            if shape is not None and val.axis in (-1, len(shape) - 1):
                self.g.get(val.group).consumers.append((name, val.factor))
                out = self.g.new(m.out_features)
                self.g.get(out).producers.append(name)
                self.values[node] = _Value(out, -1)
                return
        norm = isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and val is not None
        if norm and val.factor == 1 and (val.axis == 1 or len(_shape(src) or ()) == 2):
            self.g.get(val.group).norms.append(name)
            self.values[node] = val
            return
        if isinstance(m, PASS_MODULES) and src is not None:
            self._pass(node, src)
            return
        if isinstance(m, nn.Flatten) and src is not None:
            self._flatten(node, src, m.start_dim, m.end_dim)
            return
        self._unknown(node, f"{type(m).__name__} {name}")

    def _flatten(self, node, src, start: int, end: int) -> None:
        val, shape = self.values.get(src), _shape(src)
        if val is None or shape is None:
            return
        if start == 1 and end in (-1, len(shape) - 1) and val.axis == 1 and val.factor == 1:
            self.values[node] = _Value(val.group, -1, int(np.prod(shape[2:], dtype=np.int64)))
        else:
            self._unknown(node, "a flatten of other axes")

    def _join(self, node: torch.fx.Node, args) -> None:
        out = _shape(node)
        tensors = [a for a in args if isinstance(a, torch.fx.Node)]
        vals = [(a, self.values[a]) for a in tensors if a in self.values]
        if out is None or not vals:
            self._unknown(node, f"{node.target}")
            return
        joined: _Value | None = None
        for a, v in vals:
            shape = _shape(a) or ()
            axis = v.axis % len(shape) if shape else 0
            if len(shape) != len(out) or shape[axis] == 1:
                continue  # broadcast along the channels (a per-sample scale): nothing to join
            if joined is None:
                joined = v
            elif (v.axis % len(shape), v.factor) != (joined.axis % len(out), joined.factor):
                self._unknown(node, "an elementwise op over different layouts")
                return
            else:
                joined = _Value(self.g.join(joined.group, v.group), joined.axis, joined.factor)
        if joined is None:
            self._unknown(node, f"{node.target}")
        else:
            self.values[node] = joined

    def _function(self, node: torch.fx.Node) -> None:
        fn = node.target
        if fn in PASS_FUNCTIONS and node.args and isinstance(node.args[0], torch.fx.Node):
            self._pass(node, node.args[0])
        elif fn in JOIN_FUNCTIONS:
            self._join(node, node.args)
        elif fn in FLATTEN_FUNCTIONS and isinstance(node.args[0], torch.fx.Node):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self._flatten(node, node.args[0], start, end)
        else:
            self._unknown(node, getattr(fn, "__name__", str(fn)))

    def _method(self, node: torch.fx.Node) -> None:
        name, src = node.target, node.args[0]
        if name in PASS_METHODS:
            self._pass(node, src)
        elif name in JOIN_METHODS:
            self._join(node, node.args)
        elif name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self._flatten(node, src, start, end)
        else:
            self._unknown(node, f".{name}()")


def channel_groups(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[Group]:
    """Every channel group of `module` (traced on `example`), prunable or not."""
    return _Analysis(module, example).run()


# --- scores -----------------------------------------------------------------------------


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).sum(1)


def group_scores(module: nn.Module, grp: Group, fn) -> np.ndarray:
    """One score per channel: `fn` (|w| or |g·w|) summed over the producers' filters, the
    norms' scales and the consumers' input columns."""
    mods = dict(module.named_modules())
    s = torch.zeros(grp.size, dtype=torch.float64)
    for name in grp.producers:
        m = mods[name]
        s += _rows(fn(m.weight)).double()
        if m.bias is not None:
            s += fn(m.bias).double()
    for name in grp.norms + grp.depthwise:
        s += _rows(fn(mods[name].weight)).double()
    for name, _k in grp.consumers:
        w = fn(mods[name].weight)  # [out, in, ...]: channel c is columns c*k .. c*k+k-1
        s += w.transpose(0, 1).reshape(grp.size, -1).sum(1).double()
    return s.numpy()


# --- applying ---------------------------------------------------------------------------


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous())


def _keep_out(m: nn.Module, idx: torch.Tensor) -> None:
    m.weight = _param(m.weight[idx])
    if getattr(m, "bias", None) is not None:
        m.bias = _param(m.bias[idx])
    if isinstance(m, nn.Conv2d):
        m.out_channels = len(idx)
    else:
        m.out_features = len(idx)


def _keep_norm(m: nn.Module, idx: torch.Tensor) -> None:
    if m.weight is not None:
        m.weight = _param(m.weight[idx])
        m.bias = _param(m.bias[idx])
    for buf in ("running_mean", "running_var"):
        if getattr(m, buf, None) is not None:
            setattr(m, buf, getattr(m, buf)[idx].clone())
    m.num_features = len(idx)


def _keep_depthwise(m: nn.Conv2d, idx: torch.Tensor) -> None:
    _keep_out(m, idx)
    m.in_channels = m.groups = len(idx)


def _keep_in(m: nn.Module, idx: torch.Tensor, k: int) -> None:
    cols = (idx[:, None] * k + torch.arange(k)[None, :]).reshape(-1)
    m.weight = _param(m.weight[:, cols])
    if isinstance(m, nn.Conv2d):
        m.in_channels = len(cols)
    else:
        m.in_features = len(cols)


def apply_groups(module: nn.Module, groups: list[Group], keep: list[list[int]]) -> None:
    """Keep channels `keep[i]` (sorted indices) of `groups[i]`, in place."""
    mods = dict(module.named_modules())
    for grp, kept in zip(groups, keep, strict=True):
        if len(kept) == grp.size:
            continue
        if not kept:
            raise InvalidInput(f"{grp.name()}: pruning every channel would leave none")
        idx = torch.as_tensor(sorted(kept), dtype=torch.long)
        for name in grp.producers:
            _keep_out(mods[name], idx)
        for name in grp.norms:
            _keep_norm(mods[name], idx)
        for name in grp.depthwise:
            _keep_depthwise(mods[name], idx)
        for name, k in grp.consumers:
            _keep_in(mods[name], idx, k)


# --- the record in the weights file, and reloading ----------------------------------------

RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


def record(groups: list[Group], keep: list[list[int]]) -> dict[str, Any]:
    """What the weights file says about its shapes: the modules pruning resized."""
    changed = sorted(
        {
            name
            for grp, kept in zip(groups, keep, strict=True)
            if len(kept) < grp.size
            for name in grp.producers + grp.norms + grp.depthwise + [c for c, _ in grp.consumers]
        }
    )
    return {"method": "channels", "modules": changed}


def metadata(rec: dict[str, Any]) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(rec, sort_keys=True)}


def read_record(meta: dict[str, str] | None, path: Any) -> dict[str, Any] | None:
    """The pruning record in a safetensors file's metadata, checked; None when there is none."""
    text = (meta or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        rec = json.loads(text)
        names = rec["modules"]
        ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise InvalidInput(f"{path}: metadata {METADATA_KEY} is not a list of module names")
    return rec


def rebuild_shapes(net: nn.Module, state: dict[str, torch.Tensor], rec: dict, path: Any) -> None:
    """Give the modules the record names the shapes of their tensors in `state` (values are
    loaded after, strictly); only Conv2d, Linear and BatchNorm can be resized."""
    mods = dict(net.named_modules())
    for name in rec["modules"]:
        m = mods.get(name)
        if not isinstance(m, RESIZABLE):
            kind = type(m).__name__ if m is not None else "nothing"
            raise InvalidInput(f"{path}: pruning record names {name!r}, which is {kind}")
        for attr, cur in list(m.named_parameters(recurse=False)) + list(
            m.named_buffers(recurse=False)
        ):
            saved = state.get(f"{name}.{attr}")
            if saved is None or tuple(saved.shape) == tuple(cur.shape):
                continue
            if saved.dim() != cur.dim():
                raise InvalidInput(f"{path}: {name}.{attr} has rank {saved.dim()}, not {cur.dim()}")
            empty = torch.empty(saved.shape, dtype=cur.dtype)
            setattr(m, attr, _param(empty) if isinstance(cur, nn.Parameter) else empty)
        w = m.weight
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1
            m.out_channels = w.shape[0]
            m.in_channels = w.shape[0] if depthwise else w.shape[1]
            if depthwise:
                m.groups = w.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        else:
            m.num_features = w.shape[0] if w is not None else m.running_mean.shape[0]
