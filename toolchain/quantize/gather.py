"""Embedding tables in int8: a Gather's float table stored as int8 rows with one scale per row.

onnxruntime's QDQ quantizer quantizes a Gather table with one scale for the whole table (or
leaves it in float, as our presets did): the table of a BERT-size encoder is then most of
the engine (all-MiniLM-L6-v2: 30522 x 384 floats, 47 of its 60 MB). A scale per row keeps
each token's vector within half a step of its own largest value, whatever the other rows
hold. DequantizeLinear cannot take a per-row scale after the Gather (the rows it reads vary
per call), so the scales are gathered with the same indices:

    Gather(table_int8, ids) -> Cast(float) -> Mul(Gather(scales[V, 1], ids)) -> the output

Standard ONNX ops only: every runtime runs it, no contrib op.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_TABLE_BYTES = 1 << 18  # smaller tables (token types) stay float: nothing to gain


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: q in [-127, 127], scale [rows, 1]; |q * scale - table| is at
    most scale / 2 per element. An all-zero row gets scale 1 (and zeros)."""
    peak = np.abs(table).max(axis=1, keepdims=True).astype(np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def gather_tables(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """Gathers on axis 0 of a float32 rank-2 initializer of at least MIN_TABLE_BYTES that
    only Gathers read (a table a MatMul also reads, tied weights, stays float)."""
    skip = set(exclude)
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.name in skip or n.input[0] not in inits:
            continue
        t = inits[n.input[0]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        size = int(np.prod(t.dims)) * 4
        if (
            axis != 0
            or len(t.dims) != 2
            or t.data_type != onnx.TensorProto.FLOAT
            or size < MIN_TABLE_BYTES
            or any(r.op_type != "Gather" for r in readers[n.input[0]])
        ):
            continue
        out.append(n)
    return out


def quantize_gathers(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> list[dict]:
    """Rewrite each eligible Gather (gather_tables) in place; returns what was done per table
    (for the report: name, rows, bytes before and after, the largest step)."""
    nodes = gather_tables(model, exclude)
    inits = {i.name: i for i in model.graph.initializer}
    done: dict[str, tuple[str, str]] = {}
    report = []
    for n in nodes:
        table = n.input[0]
        if table not in done:
            w = numpy_helper.to_array(inits[table])
            q, scale = int8_rows(w)
            qname, sname = f"{table}_int8_rows", f"{table}_row_scales"
            model.graph.initializer.remove(inits[table])
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)]
            )
            done[table] = (qname, sname)
            report.append({
                "table": table, "rows": int(w.shape[0]), "fp32_bytes": int(w.nbytes),
                "int8_bytes": int(q.nbytes + scale.nbytes), "max_step": float(scale.max()),
            })  # fmt: skip
        qname, sname = done[table]
        out, ids = n.output[0], n.input[1]
        base = n.name or out
        idx = list(model.graph.node).index(n)
        new = [
            helper.make_node("Gather", [qname, ids], [f"{base}_q"], name=n.name, axis=0),
            helper.make_node(
                "Cast", [f"{base}_q"], [f"{base}_f"], name=f"{base}_cast", to=onnx.TensorProto.FLOAT
            ),  # fmt: skip
            helper.make_node("Gather", [sname, ids], [f"{base}_s"], name=f"{base}_scale", axis=0),
            helper.make_node("Mul", [f"{base}_f", f"{base}_s"], [out], name=f"{base}_dequant"),
        ]
        model.graph.node.remove(n)
        for k, node in enumerate(new):
            model.graph.node.insert(idx + k, node)
    return report


def quantized_gathers(model: onnx.ModelProto) -> list[str]:
    """Names of Gathers that read an int8 row table made here."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and n.input and n.input[0].endswith("_int8_rows")
    ]
