"""Attention blocks of an optimised ONNX graph rewritten into onnxruntime's fused attention
operators (com.microsoft), recognised by data flow: the ort-cpu engine's attention fusion.

An exported encoder computes attention as a dozen nodes per layer: Q, K and V reshaped to heads
and transposed, the scaled Q·Kᵀ, the additive mask (and any position bias), Softmax, the
weighted sum of V, the transpose and reshape back. onnxruntime's own AttentionFusion matches
only the graphs its transformers optimizer was written around (a TorchScript export, not
torch.export's), and not int8 graphs in Q/DQ form, so we match the blocks ourselves.

Matched, per Softmax on the last axis:

    scores = Q_h · K_hᵀ × scale          (MatMul or FusedMatMul; a scalar Mul/Div on the scores
                                          or on Q_h is folded into the scale)
    x      = scores + bias + ...          (any additive terms: the mask, a position bias)
    p      = Softmax(x)                   (after our masked-Softmax clamp, which it replaces)
    out    = Reshape(Transpose(p · V_h))  (back to [B, S, N·H]; in int8 maybe quantized first)

with X_h = Transpose(Reshape(X, [., ., N, H]), [0, 2, 1, 3]) (K_hᵀ: perm [0, 2, 3, 1]).

What a block becomes (fuse_attention): Q, K and V projecting one input are packed into one
product (_pack); a packed block is then one Attention (float: the projection inside the op) or
one QAttention (int8, when its only additive term is a padding mask); any other block is the
packed product, a Split and MultiHeadAttention (or MultiHeadAttention on Q, K and V as they
are). A term probed to be the padding mask of a [B, T] input becomes that input (_padding_input);
other terms are summed, floored at MASK_FLOOR and broadcast to [B|1, N|1, S, T] as the
attention bias. A block that computes anything else (rotary embeddings between the reshape and
the product, disentangled attention's terms read from Q_h) is left as it is; nodes only the
fused blocks read are removed. choose() decides, by timing, whether the engine keeps it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgesmith.toolchain.core.onnx_model import GraphIndex, io_from_onnx

MS = "com.microsoft"
# Additive attention terms are floored here, the value onnxruntime's fused operators give a
# masked key themselves (their mask_filter_value): exp(-10000 + a score) is 0 in float32 as
# exp(finfo.min) is, and the kernels' exp never sees -3.4e38 (the masked-Softmax clamp's
# purpose, targets/ort_cpu.py).
MASK_FLOOR = -10000.0
# An additive attention mask's value where a key is padding is at or below this (finfo.min,
# -inf, -1e4 or -1e9 in the exporters we have seen); the masked-Softmax clamp looks for it too.
MASK_CONSTANT = -1000.0


@dataclass
class Block:
    """One matched attention block."""

    softmax: str
    q: str
    k: str
    v: str
    heads: int
    scale: float
    out: str  # the [B, S, N·H] tensor the block computes
    bias: list[str] = field(default_factory=list)  # additive terms before the Softmax
    packed: bool = False  # Q, K and V computed by one product (_pack)
    op: str = "MultiHeadAttention"  # the fused op the block became
    quantize: onnx.NodeProto | None = None  # the QuantizeLinear of the output, per tensor


def _scalar(index: GraphIndex, tensor: str) -> float | None:
    a = index.constant(tensor)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _op(index: GraphIndex, tensor: str, *ops: str) -> onnx.NodeProto | None:
    node = index.producers.get(tensor)
    return node if node is not None and node.op_type in ops else None


def _shape_tail(index: GraphIndex, shape: str, n: int) -> list[int] | None:
    """The last `n` entries of a Reshape's shape tensor when they are constants, with the
    shape's length; from a constant or a Concat whose last pieces are constants."""
    a = index.constant(shape)
    if a is not None:
        return [int(x) for x in a.reshape(-1)[-n:]] + [a.size]
    concat = _op(index, shape, "Concat")
    if concat is None:
        return None
    tail: list[int] = []
    for piece in reversed(concat.input):
        c = index.constant(piece)
        if c is None or len(tail) >= n:
            break
        tail = [int(x) for x in c.reshape(-1)] + tail
    length = _shape_length(index, concat)
    return None if len(tail) < n or length is None else tail[-n:] + [length]


def _shape_length(index: GraphIndex, concat: onnx.NodeProto) -> int | None:
    """How many entries a Concat of 1-D shape pieces has (None when one piece is unknown)."""
    sizes = [_elements(index, i) for i in concat.input]
    return None if None in sizes else sum(sizes)


def _elements(index: GraphIndex, tensor: str, depth: int = 0) -> int | None:
    """The element count of a small 1-D shape piece: a constant, a Shape slice, a scalar
    unsqueezed or reshaped to a constant shape, a Cast of one; None when it is not known."""
    c = index.constant(tensor)
    if c is not None:
        return c.size
    node = index.producers.get(tensor)
    if node is None or depth > 4:
        return None
    if node.op_type == "Shape":
        start, end = _attr(node, "start", 0), _attr(node, "end")
        return end - start if end is not None and 0 <= start <= end else None
    if node.op_type == "Unsqueeze":  # a scalar made 1-D
        return 1
    if node.op_type == "Reshape":  # to [1] or [-1]: as many as its input has
        shape = index.constant(node.input[1])
        if shape is None or shape.size != 1 or shape[0] not in (1, -1):
            return None
        return _elements(index, node.input[0], depth + 1)
    if node.op_type in ("Cast", "Identity", "Squeeze", "Neg"):
        return _elements(index, node.input[0], depth + 1)
    if node.op_type in ("Add", "Sub", "Mul", "Div"):  # shape arithmetic: broadcast of pieces
        sizes = [_elements(index, i, depth + 1) for i in node.input]
        return None if None in sizes else max(sizes)
    return None


def _heads(index: GraphIndex, tensor: str, perm: list[int]) -> tuple[str, int, int] | None:
    """(X, N, H) when `tensor` = Transpose(Reshape(X, [., ., N, H]), perm)."""
    t = _op(index, tensor, "Transpose")
    if t is None or list(_attr(t, "perm", [])) != perm:
        return None
    r = _op(index, t.input[0], "Reshape")
    if r is None:
        return None
    tail = _shape_tail(index, r.input[1], 2)
    if tail is None or tail[2] != 4 or 0 in tail[:2] or min(tail[:2]) < -1:
        return None
    heads, size = tail[:2]
    if -1 in (heads, size):  # [., ., -1, H] or [., ., N, -1]: from the projection's width
        width = _width(index, r.input[0])
        known = size if heads == -1 else heads
        if width is None or known == -1 or width % known:
            return None
        heads, size = (width // size, size) if heads == -1 else (heads, width // heads)
    return r.input[0], heads, size


def _width(index: GraphIndex, tensor: str) -> int | None:
    """The last dimension of a projection's output: its weight's columns, through a bias Add."""
    for _ in range(3):
        node = index.producers.get(tensor)
        if node is None:
            return None
        if node.op_type in ("MatMul", "MatMulIntegerToFloat", "MatMulInteger", "FusedMatMul"):
            w = index.initializers.get(node.input[1])
            return int(w.dims[-1]) if w is not None and len(w.dims) == 2 else None
        if node.op_type != "Add":
            return None
        consts = [i for i in node.input if i in index.initializers]
        if len(consts) != 1:
            return None
        tensor = next(i for i in node.input if i not in index.initializers)
    return None


def _scores(index: GraphIndex, tensor: str, scale: float = 1.0):
    """(Q, K, N, H, scale, additive terms) of a scores tensor, or None."""
    node = index.producers.get(tensor)
    if node is None:
        return None
    if node.op_type == "Add":
        if scale != 1.0:  # (Q·Kᵀ + term) × c: the term would need the scale too
            return None
        for k, i in enumerate(node.input[:2]):
            found = _scores(index, i, scale)
            if found is not None:
                return (*found[:5], [*found[5], node.input[1 - k]])
        return None
    if node.op_type in ("Mul", "Div"):
        for k, i in enumerate(node.input[:2]):
            c = _scalar(index, node.input[1 - k])
            if c is None or c == 0 or (node.op_type == "Div" and k == 1):
                continue
            return _scores(index, i, scale * (c if node.op_type == "Mul" else 1 / c))
        return None
    if node.op_type == "MatMul":
        alpha, trans_b = 1.0, 0
    elif node.op_type == "FusedMatMul" and node.domain == MS:
        if any(_attr(node, a, 0) for a in ("transA", "transBatchA", "transBatchB")):
            return None
        alpha, trans_b = _attr(node, "alpha", 1.0), _attr(node, "transB", 0)
    else:
        return None
    qh, kt = node.input[0], node.input[1]
    q_scale = 1.0
    mul = _op(index, qh, "Mul", "Div")  # Q_h scaled before the product
    if mul is not None:
        for k, i in enumerate(mul.input[:2]):
            c = _scalar(index, mul.input[1 - k])
            if c is not None and c != 0 and not (mul.op_type == "Div" and k == 1):
                qh, q_scale = i, (c if mul.op_type == "Mul" else 1 / c)
                break
    q = _heads(index, qh, [0, 2, 1, 3])
    k = _heads(index, kt, [0, 2, 1, 3] if trans_b else [0, 2, 3, 1])
    if q is None or k is None or q[1:] != k[1:]:
        return None
    return q[0], k[0], q[1], q[2], scale * alpha * q_scale, []


def match(index: GraphIndex, softmax: onnx.NodeProto, opset: int = 13) -> Block | None:
    """The attention block around `softmax`, or None when it is not one we can fuse."""
    default = -1 if opset >= 13 else 1  # before opset 13 Softmax flattened from axis 1
    if softmax.op_type != "Softmax" or _attr(softmax, "axis", default) not in (-1, 3):
        return None
    x = softmax.input[0]
    clamp = _op(index, x, "Max")  # clamp_masked_softmax's Max(x, ReduceMax(x) - floor)
    if clamp is not None and clamp.name.endswith("/mask_clamp/Max"):
        x = clamp.input[0]
    found = _scores(index, x)
    if found is None:
        return None
    q, k, heads, size, scale, bias = found
    readers = index.readers(softmax.output[0])
    if (
        len(readers) != 1
        or readers[0].op_type != "MatMul"
        or readers[0].input[0] != softmax.output[0]
    ):
        return None
    v = _heads(index, readers[0].input[1], [0, 2, 1, 3])
    if v is None or v[1] != heads:
        return None
    after = index.readers(readers[0].output[0])
    quantize = None  # the weighted sum quantized before the head merge (an int8 product reads it)
    if len(after) == 1 and after[0].op_type == "QuantizeLinear":
        quantize = after[0]
        params = [index.array(i) for i in quantize.input[1:] if i]
        if any(p is None or p.size != 1 for p in params):  # per tensor only: the layout changes
            return None
        after = index.readers(quantize.output[0])
    if (
        len(after) != 1
        or after[0].op_type != "Transpose"
        or list(_attr(after[0], "perm", [])) != [0, 2, 1, 3]
    ):
        return None
    merge = index.readers(after[0].output[0])
    if len(merge) != 1 or merge[0].op_type != "Reshape":
        return None
    tail = _shape_tail(index, merge[0].input[1], 1)
    if tail is None or tail[1] != 3 or tail[0] not in (-1, heads * v[2]):
        return None
    return Block(
        softmax.name, q, k, v[0], heads, scale, merge[0].output[0], bias, quantize=quantize
    )


def fuse_attention(model: onnx.ModelProto, whole: bool = True) -> list[Block]:
    """Rewrite every matched attention block into one of onnxruntime's fused ops; returns the
    blocks. With Q, K and V packed into one product (_pack), and `whole`: Attention in float
    (the projection inside the op), QAttention in int8 where the mask is a padding mask (it
    takes no additive term); else (and with whole=False) the packed product, a Split and
    MultiHeadAttention. `model` is changed in place (nodes only the fused blocks read go)."""
    index = GraphIndex(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    blocks = [b for n in model.graph.node if (b := match(index, n, opset)) is not None]
    if not blocks:
        return []
    # every probe on the graph as it is, before any block is rewritten
    probed: dict[tuple[str, ...], str | None] = {}
    paddings = [_padding_input(model, index, b.bias, probed) if b.bias else None for b in blocks]
    inserts: dict[int, list[onnx.NodeProto]] = {}  # id(node) → nodes after it
    shared: dict[tuple[str, ...], str] = {}  # a mask cast or a floored sum, made once
    inits = {i.name for i in model.graph.initializer}

    def constant(name: str, value: np.ndarray) -> str:
        if name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            inits.add(name)
        return name

    floor = constant("attention/mask_floor", np.array(MASK_FLOOR, np.float32))
    one = constant("attention/one", np.array([1], np.int64))
    for b, mask in zip(blocks, paddings, strict=True):
        base = f"attention/{b.out}"  # tensor names are unique: so are the new names
        merge = index.producers[b.out]
        nodes: list[onnx.NodeProto] = []
        padding = bias = ""
        qkv, packed = [b.q, b.k, b.v], _pack(index, b, base)
        mha_bias, out = "", b.out if b.quantize is None else f"{base}/float"
        query = b.q  # a tensor with the query's [B, S, .] (the activation when packed)
        if packed is not None:
            pack_nodes, qkv, mha_bias, init = packed
            model.graph.initializer.extend(init)
            b.packed = True
            query = pack_nodes[0].input[0]
        if mask:
            padding = f"attention/{mask}/int32"
            if (padding,) not in shared:
                nodes.append(helper.make_node("Cast", [mask], [padding], name=f"{padding}/Cast",
                                              to=onnx.TensorProto.INT32))  # fmt: skip
                shared[(padding,)] = padding
        elif b.bias:
            key = tuple(sorted(b.bias))
            if key not in shared:  # the terms summed and floored once for every block
                total = b.bias[0]
                for k, t in enumerate(b.bias[1:]):
                    nodes.append(helper.make_node("Add", [total, t], [f"{base}/sum{k}"],
                                                  name=f"{base}/Add{k}"))  # fmt: skip
                    total = f"{base}/sum{k}"
                nodes.append(helper.make_node("Max", [total, floor], [f"{base}/floored"],
                                              name=f"{base}/Max"))  # fmt: skip
                shared[key] = f"{base}/floored"
            # [B|1, N|1, 1|S, T] → [B|1, N|1, S, T]: the rows of this block's query length
            nodes += [
                helper.make_node("Shape", [query], [f"{base}/rows"], name=f"{base}/Shape",
                                 start=1, end=2),
                helper.make_node("Concat", [one, one, f"{base}/rows", one], [f"{base}/shape"],
                                 name=f"{base}/Concat", axis=0),
                helper.make_node("Expand", [shared[key], f"{base}/shape"], [f"{base}/bias"],
                                 name=f"{base}/Expand"),
            ]  # fmt: skip
            bias = f"{base}/bias"
        attrs = {"domain": MS, "num_heads": b.heads, "scale": float(b.scale)}
        fused = None
        if packed is not None:
            product, (dq, dk, dv) = pack_nodes[0], (int(w) for w in numpy_helper.to_array(init[-1]))
            if not whole or dq != dk:
                nodes += pack_nodes
            elif product.op_type == "MatMul":  # the projection inside: one node for the block
                b.op = "Attention"
                fused = helper.make_node(
                    "Attention", [*product.input, mha_bias, padding, "", bias], [out],
                    name=f"{base}/Attention", **attrs,
                    **({} if dq == dv else {"qkv_hidden_sizes": [dq, dk, dv]}),
                )  # fmt: skip
            elif not bias and dq == dv:  # QAttention takes a padding mask, no additive term
                b.op = "QAttention"
                a, w, a_scale, w_scale, a_zero, w_zero, *rest = list(product.input) + [""] * 7
                qbias = rest[0] or constant(f"{base}/zero_bias", np.zeros(3 * dq, np.float32))
                fused = helper.make_node(
                    "QAttention", [a, w, qbias, a_scale, w_scale, padding, a_zero, w_zero],
                    [out], name=f"{base}/QAttention", **attrs,
                )  # fmt: skip
            else:
                nodes += pack_nodes
        op = fused or helper.make_node(
            "MultiHeadAttention", [*qkv, mha_bias, padding, bias], [out],
            name=f"{base}/MultiHeadAttention", **attrs,
        )  # fmt: skip
        nodes.append(op)
        if b.quantize is not None:  # the original QuantizeLinear, on the fused op's output
            q = onnx.NodeProto()
            q.CopyFrom(b.quantize)
            q.input[0], q.output[0], q.name = out, b.out, f"{base}/QuantizeLinear"
            nodes.append(q)
        merge.output[0] = f"{base}/unfused"
        inserts.setdefault(id(merge), []).extend(nodes)
    _insert_after(model, inserts)
    _prune_dead(model)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return blocks


def _padding_input(model, index: GraphIndex, bias: list[str], probed: dict) -> str | None:
    """The graph input a block's additive term is the padding mask of, or None.

    It is when the term is computed from one [B, T] integer or bool input alone (other inputs
    only through their Shape) and is, for every probe, 0 where that input is 1 and <= -1000
    where it is 0, whatever the query row and head: then the fused op takes the input itself
    as its mask (masked keys at -10000, as MASK_FLOOR) and the nodes that built the
    [B, 1, S, T] mask go. A causal term, a position term or a window narrower than the longest
    probe fails it."""
    key = tuple(sorted(bias))
    if key not in probed:
        probed[key] = None
        try:
            if len(bias) == 1:
                probed[key] = _probe(_subgraph(model, index, bias[0]))
        except Exception:  # noqa: BLE001 (onnxruntime's own types): a term we cannot evaluate
            pass
    return probed[key]


# (batch, length) of the probes: short ones, and one longer than any attention window in the
# matrix (ModernBERT's local window is 128 tokens; Longformer-style windows reach 512)
PROBES = ((2, 7), (3, 12), (2, 1030))
PROBE_LIMIT = 4 << 20  # a term whose subgraph holds more weight bytes is not a mask: no probe
MASK_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)


def _probe(sub: onnx.ModelProto) -> str | None:
    """The input `sub`'s output is the padding mask of, broadcast over rows and heads: `sub`
    reads one [B, T] integer or bool input for its values (any other only through Shape), and
    gives 0 where it is 1 and <= MASK_CONSTANT where it is 0 on random masks at PROBES."""
    import onnxruntime as ort

    if sum(i.ByteSize() for i in sub.graph.initializer) > PROBE_LIMIT:
        return None  # it reads the model's weights (an embedding, a layer): not a mask alone
    producers = {o: n for n in sub.graph.node for o in n.output}
    valued, todo = set(), [sub.graph.output[0].name]  # reached not through a Shape
    while todo:
        t = todo.pop()
        node = producers.get(t)
        if t not in valued and node is not None and node.op_type != "Shape":
            todo.extend(i for i in node.input if i)
        valued.add(t)
    data = [i for i in sub.graph.input if i.name in valued]
    if len(data) != 1:
        return None
    tt = data[0].type.tensor_type
    if len(tt.shape.dim) != 2 or tt.elem_type not in MASK_TYPES:
        return None
    mask = data[0].name
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, length in PROBES:
        feeds = {}
        for t in io_from_onnx(sub).inputs:
            shape = [batch] + [length if not isinstance(d, int) else d for d in t.dims[1:]]
            feeds[t.name] = np.ones(shape, np.dtype(t.dtype))
        length = feeds[mask].shape[1]  # a fixed length stays
        m = (rng.random((batch, length)) < 0.6).astype(feeds[mask].dtype)
        m[:, 0] = 1  # every row keeps a key
        feeds[mask] = m
        out = session.run(None, feeds)[0]
        if out.ndim != 4 or out.shape[0] not in (1, batch) or out.shape[-1] != length:
            return None
        keep = np.broadcast_to(
            m.astype(bool)[:, None, None, :], np.broadcast_shapes(out.shape, (batch, 1, 1, length))
        )
        full = np.broadcast_to(out, keep.shape)
        if not (np.all(full[keep] == 0) and np.all(full[~keep] <= MASK_CONSTANT)):
            return None
    return mask


def _subgraph(model: onnx.ModelProto, index: GraphIndex, tensor: str) -> onnx.ModelProto:
    """The nodes `tensor` is computed by (back to the graph inputs), as a model of its own."""
    inputs = {i.name: i for i in model.graph.input}
    nodes, used, todo, seen = {}, set(), [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in index.initializers or t in inputs:
            used.add(t)
        node = index.producers.get(t)
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            todo.extend(i for i in node.input if i)
    graph = helper.make_graph(
        [n for n in model.graph.node if id(n) in nodes],  # in the graph's order
        "term",
        [inputs[i] for i in inputs if i in used],
        [helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)],
        [index.initializers[i] for i in index.initializers if i in used],
    )
    return helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )


def _projection(index: GraphIndex, tensor: str):
    """(kind, node, weight, bias) of a projection X·W (+ b) whose only reader is its block:
    kind "float" for MatMul (+ Add of a [N] bias), "int8" for MatMulIntegerToFloat (its bias
    input, if any); None for anything else."""
    if len(index.readers(tensor)) != 1:
        return None
    node = index.producers.get(tensor)
    if node is None:
        return None
    inits = index.initializers
    if node.op_type == "MatMulIntegerToFloat" and node.domain == MS:
        w = node.input[1]
        weight_side = [node.input[i] for i in (3, 5, 6) if i < len(node.input)]
        if (
            w not in inits
            or len(inits[w].dims) != 2
            or any(i and i not in inits for i in weight_side)
        ):
            return None
        return "int8", node, w, node.input[6] if len(node.input) > 6 else ""
    bias = ""
    if node.op_type == "Add":
        consts = [i for i in node.input if i in inits and len(inits[i].dims) == 1]
        if len(consts) != 1:
            return None
        bias = consts[0]
        x = next(i for i in node.input if i != bias)
        if len(index.readers(x)) != 1:
            return None
        node = index.producers.get(x)
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        return None
    if len(inits[node.input[1]].dims) != 2:
        return None
    return "float", node, node.input[1], bias


def _per_column(index: GraphIndex, name: str, width: int, dtype) -> np.ndarray:
    """An optional per-column input as a [width] array ("" → zeros; a scalar → repeated)."""
    if not name:
        return np.zeros(width, dtype)
    a = index.array(name)
    return np.broadcast_to(a.reshape(-1), (width,)) if a.size == 1 else a.reshape(-1)


def _pack(index: GraphIndex, b: Block, base: str):
    """Q, K and V from one product when they project one input: their weights side by side,
    then a Split (onnxruntime's CPU MultiHeadAttention takes no packed Q/K/V). One GEMM of
    3·N columns for three of N: at one short sentence the three products' fixed cost per call
    is most of their time. The float biases go to MultiHeadAttention's bias input; an int8
    product keeps its own (and its per-column scales and zero points, concatenated).
    Returns (nodes, [q, k, v], bias for MultiHeadAttention, initializers) or None."""
    found = [_projection(index, t) for t in (b.q, b.k, b.v)]
    if any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None
    kind = found[0][0]
    nodes = [f[1] for f in found]
    if len({n.name for n in nodes}) != 3:
        return None
    shared = (slice(0, 1),) if kind == "float" else (slice(0, 1), slice(2, 3), slice(4, 5))
    for sl in shared:  # the same activation (and, in int8, its scale and zero point)
        if len({tuple(n.input[sl]) for n in nodes}) != 1:
            return None
    ws = [index.array(f[2]) for f in found]
    if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws}) != 1:
        return None
    widths = [w.shape[1] for w in ws]
    base = f"{base}/qkv"
    init = [numpy_helper.from_array(np.concatenate(ws, axis=1), f"{base}/weight")]
    bias = np.concatenate(
        [_per_column(index, f[3], w, np.float32) for f, w in zip(found, widths, strict=True)]
    )
    if kind == "float":
        product = helper.make_node(
            "MatMul", [nodes[0].input[0], f"{base}/weight"], [f"{base}/out"], name=f"{base}/MatMul"
        )
        init.append(numpy_helper.from_array(bias.astype(np.float32), f"{base}/bias"))
        mha_bias = f"{base}/bias" if any(bias) else ""
    else:
        inputs = list(nodes[0].input[:7]) + [""] * (7 - len(nodes[0].input))
        inputs[1] = f"{base}/weight"
        for k, what in ((3, "scale"), (5, "zero_point")):
            names = [n.input[k] if len(n.input) > k else "" for n in nodes]
            if not any(names):
                inputs[k] = ""
                continue
            ref = index.array(next(x for x in names if x))
            cols = np.concatenate(
                [_per_column(index, x, w, ref.dtype) for x, w in zip(names, widths, strict=True)]
            )
            init.append(numpy_helper.from_array(cols, f"{base}/{what}"))
            inputs[k] = f"{base}/{what}"
        inputs[6] = f"{base}/bias" if any(bias) else ""  # not the first product's own
        if any(bias):
            init.append(numpy_helper.from_array(bias.astype(np.float32), f"{base}/bias"))
        while inputs and not inputs[-1]:
            inputs.pop()
        product = helper.make_node(
            "MatMulIntegerToFloat",
            inputs,
            [f"{base}/out"],
            name=f"{base}/MatMulIntegerToFloat",
            domain=MS,
        )
        mha_bias = ""
    init.append(numpy_helper.from_array(np.array(widths, np.int64), f"{base}/split"))
    outs = [f"{base}/{x}" for x in "qkv"]
    split = helper.make_node(
        "Split", [f"{base}/out", f"{base}/split"], outs, name=f"{base}/Split", axis=-1
    )
    return [product, split], outs, mha_bias, init


def _insert_after(model: onnx.ModelProto, after: dict[int, list[onnx.NodeProto]]) -> None:
    """Insert nodes after the node of each id, then order the graph topologically (a shared
    node made with one block may be read by a block placed before it), keeping the order
    otherwise."""
    nodes = []
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(after.get(id(n), []))
    made = {o for n in nodes for o in n.output if o}
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    ordered, waiting = [], list(nodes)
    while waiting:
        rest = []
        for n in waiting:
            if all(not i or i in ready or i not in made for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(waiting):  # a cycle cannot come from these rewrites: keep as is
            ordered.extend(rest)
            break
        waiting = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _prune_dead(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is read (and initializers no node reads)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    declared = {i.name for i in g.input}  # an initializer that is also an input stays (IR < 4)
    live = [i for i in g.initializer if i.name in needed or i.name in declared]
    del g.initializer[:]
    g.initializer.extend(live)
    made = {o for n in g.node for o in n.output}
    stale = [v for v in g.value_info if v.name not in made]
    for v in stale:
        g.value_info.remove(v)


# The shapes a build times the fused graph at: (batch, length of the symbolic non-batch axes):
# one short sentence, one padded to 128, eight padded to 128 (the shapes users run an encoder
# at; benchmarks/attention_peer.py times the same against the transformers optimizer).
SHAPES = ((1, 16), (1, 128), (8, 128))
ROUNDS = 15
# The fused graph is kept when it is faster at every shape, within this much of the unfused
# at any one (noise), and faster overall (the geometric mean of the ratios).
TOLERANCE = 1.02
# Outputs of the fused and unfused graphs may differ by float rounding only (the same
# products summed in another order): relative to the output's largest magnitude.
AGREEMENT = 1e-4


def choose(
    unfused: onnx.ModelProto, io, mode: str, settings, workdir
) -> tuple[onnx.ModelProto, dict]:
    """The graph to ship and what was done. "unfused": `unfused` as it is. "fused": every
    matched block fused, once both graphs give the same outputs at every shape in SHAPES.
    "auto": fused where it also times faster there, both graphs side by side with the
    engine's own session settings. The inputs are seeded (core/timing.py), each mask row with
    its own padding. A fused graph that does not load, run or agree, or that cannot be
    checked, is not kept. Returns (model, engine.json record)."""
    rec: dict = {"mode": mode, "blocks": 0, "kept": False}
    if mode == "unfused":
        return unfused, {**rec, "why": "attention = unfused"}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in unfused.graph.node for a in n.attribute):  # fmt: skip
        return unfused, {**rec, "why": "the graph has subgraphs (If/Loop/Scan): not rewritten"}
    for whole in (True, False):  # the whole-block ops first; MultiHeadAttention if refused
        fused = onnx.ModelProto()
        fused.CopyFrom(unfused)
        try:
            blocks = fuse_attention(fused, whole)
        except Exception as e:  # noqa: BLE001 (a graph we did not foresee): keep it unfused
            return unfused, {**rec, "why": f"not rewritten: {_line(e)}"}
        ops = dict(Counter(b.op for b in blocks))
        rec.update(blocks=len(blocks), heads=sorted({b.heads for b in blocks}), ops=ops,
                   packed=sum(b.packed for b in blocks))  # fmt: skip
        if not blocks:
            return unfused, {**rec, "why": "no attention block matched"}
        try:
            graphs = {"unfused": unfused, "fused": fused}
            measured = _measure(graphs, io, settings, workdir, timed=mode == "auto")
            break
        except _Rejected as e:
            refused = str(e)
            if whole and set(ops) != {"MultiHeadAttention"}:
                rec["refused"] = (
                    f"{', '.join(sorted(set(ops) - {'MultiHeadAttention'}))}: {refused}"
                )
                continue
            return unfused, {**rec, "why": refused}
        except _CannotRun as e:
            return unfused, {**rec, "why": f"not checked, kept unfused: {e}"}
    if mode == "fused":
        shapes = ", ".join(measured)
        return fused, {**rec, "kept": True, "why": f"attention = fused; outputs agree at {shapes}"}
    ratios = [m["fused_ms"] / m["unfused_ms"] for m in measured.values()]
    mean = float(np.exp(np.mean(np.log(ratios))))
    keep = max(ratios) <= TOLERANCE and mean < 1.0
    why = (f"fused {mean:.3f}x the unfused time (geometric mean over {len(ratios)} shapes, "
           f"slowest {max(ratios):.3f}x)")  # fmt: skip
    rec = {**rec, "kept": keep, "why": why if keep else why + ": not faster, kept unfused",
           "measured": measured}  # fmt: skip
    return (fused if keep else unfused), rec


class _CannotRun(Exception):
    """The unfused graph does not run on seeded inputs: nothing to compare with."""


class _Rejected(Exception):
    """The fused graph does not load, run or agree with the unfused one."""


# where no shape of SHAPES runs (a waveform input takes thousands of samples): one second of
# 16 kHz audio
LONG = ((1, 16000),)


def _feeds(io, batch: int, seq: int | None) -> dict[str, np.ndarray]:
    from edgesmith.toolchain.core.timing import synthetic_feeds

    feeds = synthetic_feeds(io, batch, seq)
    for name, a in feeds.items():
        if "mask" in name and a.ndim == 2 and a.shape[1] >= 8 and a.dtype.kind in "iub":
            for row in range(a.shape[0]):  # each row its own padding: 1/8 to 3/8 of the keys
                a[row, a.shape[1] - (row % 3 + 1) * a.shape[1] // 8 :] = 0
    return feeds


def _measure(graphs: dict, io, settings, workdir, timed: bool) -> dict[str, dict]:
    """The "fused" graph's outputs compared with the "unfused" one's (and, `timed`, both timed)
    at every shape that runs."""
    import tempfile

    from edgesmith.toolchain.core.ort_session import ort_session
    from edgesmith.toolchain.core.timing import side_by_side

    with tempfile.TemporaryDirectory(prefix=".attention-", dir=workdir) as tmp:
        paths = {name: Path(tmp) / f"{name}.onnx" for name in ("unfused", "fused")}
        try:
            for name, path in paths.items():
                onnx.save(graphs[name], str(path))
            sessions = {"unfused": ort_session(paths["unfused"], settings)}
        except Exception as e:  # noqa: BLE001 (onnx's and onnxruntime's own types)
            raise _CannotRun(_line(e)) from None
        try:
            sessions["fused"] = ort_session(paths["fused"], settings)
        except Exception as e:  # noqa: BLE001 (onnxruntime refused the rewrite)
            raise _Rejected(f"the fused graph does not load: {_line(e)}") from None
        seq_axes = any(not isinstance(d, int) for t in io.inputs for d in t.dims[1:])
        shapes = SHAPES if seq_axes else tuple(dict.fromkeys((b, None) for b, _ in SHAPES))
        out: dict[str, dict] = {}
        failed = ""
        for batch, seq in (*shapes, *(LONG if seq_axes else ())):
            if out and (batch, seq) in LONG:
                break  # the long shape only where no other ran
            try:
                feeds = _feeds(io, batch, seq)
                ref = sessions["unfused"].run(None, feeds)
            except Exception as e:  # noqa: BLE001 (onnxruntime's own types): not at this shape
                failed = f"batch {batch}, length {seq}: {_line(e)}"
                continue
            try:
                got = sessions["fused"].run(None, feeds)
            except Exception as e:  # noqa: BLE001
                raise _Rejected(f"the fused graph does not run: {_line(e)}") from None
            for a, b in zip(ref, got, strict=True):
                a, b = np.asarray(a), np.asarray(b)
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise _Rejected(f"the fused graph's outputs differ in shape or type "
                                    f"({a.shape} {a.dtype}, {b.shape} {b.dtype})")  # fmt: skip
                if a.dtype.kind not in "fiub":
                    continue
                a, b = a.astype(np.float64), b.astype(np.float64)
                err = float(np.abs(a - b).max(initial=0)) / max(
                    float(np.abs(a).max(initial=0)), 1e-30
                )
                if not err <= AGREEMENT:
                    raise _Rejected(f"the fused graph's outputs differ from the unfused "
                                    f"({err:.2e} of the largest): kept unfused")  # fmt: skip
            shape = f"{batch}x{seq}" if seq else str(batch)
            out[shape] = {}
            if timed:
                fns = {k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()}
                t = side_by_side(fns, ROUNDS)
                out[shape] = {
                    "unfused_ms": round(t["unfused"], 4),
                    "fused_ms": round(t["fused"], 4),
                }
        if not out:
            raise _CannotRun(f"the model does not run on seeded inputs ({failed})")
        return out


def _line(e: Exception) -> str:
    what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return what.removeprefix("[ONNXRuntimeError] : ")[:240]
