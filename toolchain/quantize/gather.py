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

from edgesmith.toolchain.core.onnx_model import GraphIndex

MIN_TABLE_BYTES = 1 << 18  # smaller tables (token types) stay float: nothing to gain
ROWS, SCALES = "_int8_rows", "_row_scales"  # the suffixes of a table's two initializers


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
    index = GraphIndex(model)
    out = []
    for n in model.graph.node:
        t = index.initializers.get(n.input[0]) if n.op_type == "Gather" else None
        if t is None or n.name in skip:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if (
            axis == 0
            and len(t.dims) == 2
            and t.data_type == onnx.TensorProto.FLOAT
            and int(np.prod(t.dims)) * 4 >= MIN_TABLE_BYTES
            and all(r.op_type == "Gather" for r in index.readers(t.name))
        ):
            out.append(n)
    return out


def _record(table: str, q: np.ndarray, scale: np.ndarray) -> dict:
    """What the report says of one int8 table: rows, bytes before and after, largest step."""
    return {
        "table": table, "rows": int(q.shape[0]), "fp32_bytes": int(q.size * 4),
        "int8_bytes": int(q.nbytes + scale.nbytes), "max_step": float(scale.max()),
    }  # fmt: skip


def quantize_gathers(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> list[dict]:
    """Rewrite each eligible Gather (gather_tables) in place; returns what was done per table
    (_record)."""
    nodes = gather_tables(model, exclude)
    inits = {i.name: i for i in model.graph.initializer}
    done: dict[str, tuple[str, str]] = {}
    report = []
    for n in nodes:
        table = n.input[0]
        if table not in done:
            q, scale = int8_rows(numpy_helper.to_array(inits[table]))
            qname, sname = f"{table}{ROWS}", f"{table}{SCALES}"
            model.graph.initializer.remove(inits[table])
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)]
            )
            done[table] = (qname, sname)
            report.append(_record(table, q, scale))
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


def int8_tables(model: onnx.ModelProto) -> list[dict]:
    """The int8 tables of a model made here, as quantize_gathers reported them (for the
    quantize stage's report: size beside the gate's accuracy)."""
    index = GraphIndex(model)
    out = []
    for name in index.initializers:
        if name.endswith(ROWS):
            table = name[: -len(ROWS)]
            out.append(_record(table, index.array(name), index.array(table + SCALES)))
    return out


def quantized_gathers(model: onnx.ModelProto) -> list[str]:
    """Names of Gathers that read an int8 row table made here."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and n.input and n.input[0].endswith(ROWS)
    ]
