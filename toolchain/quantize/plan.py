"""Which nodes of a model are quantized: the preset's op types, minus what stays in float."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.presets import Preset


def constants(model: onnx.ModelProto) -> set[str]:
    """Names of tensors whose value is fixed: initializers and Constant outputs."""
    out = {i.name for i in model.graph.initializer}
    out.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return out


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two inputs are both computed at run time (attention's Q·Kᵀ and P·V)."""
    consts = constants(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[0] not in consts and n.input[1] not in consts
    ]


def match_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Node names matching any fnmatch pattern ("*/attention/*", "/0/Conv_1")."""
    pats = list(patterns)
    return [n.name for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in pats)]


def check_op_types(op_types: Iterable[str]) -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    known = set(QDQRegistry)
    bad = [o for o in op_types if o not in known]
    if bad:
        raise InvalidInput(
            f"op type(s) {bad} cannot be quantized to QDQ; available: {', '.join(sorted(known))}"
        )
    return list(op_types)


@dataclass(frozen=True)
class Plan:
    """Which nodes are quantized: op types, and the nodes left in float (with why)."""

    op_types: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # node → reason

    def quantized(self, model: onnx.ModelProto) -> list[str]:
        return [
            n.name
            for n in model.graph.node
            if n.op_type in self.op_types and n.name not in self.excluded
        ]

    def with_float(self, nodes: Iterable[str], reason: str) -> Plan:
        return Plan(self.op_types, {**self.excluded, **{n: reason for n in nodes}})


def make_plan(
    model: onnx.ModelProto,
    preset: Preset,
    op_types: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> Plan:
    """The preset's op types (or `op_types`), minus excluded patterns and, per the preset,
    MatMuls of two activations. An --exclude pattern that matches nothing is an error: a typo
    would otherwise quantize the node the user meant to protect."""
    types = tuple(check_op_types(op_types)) if op_types else preset.op_types
    excluded: dict[str, str] = {}
    for pattern in list(preset.exclude) + list(exclude):
        hits = match_nodes(model, [pattern])
        if not hits:
            sample = ", ".join(n.name for n in list(model.graph.node)[:5])
            raise InvalidInput(
                f"--exclude '{pattern}' matches no node (node names look like: {sample}, ...)"
            )
        excluded.update({h: f"excluded by pattern '{pattern}'" for h in hits})
    if not preset.activation_matmuls:
        for name in activation_matmuls(model):
            excluded.setdefault(
                name, f"preset {preset.name}: MatMul of two activations stays in float"
            )
    if not [n for n in model.graph.node if n.op_type in types and n.name not in excluded]:
        present = sorted({n.op_type for n in model.graph.node})
        raise InvalidInput(
            f"nothing to quantize: no node of op types {list(types)} is left "
            f"(the model has {', '.join(present)})"
        )
    return Plan(types, excluded)
