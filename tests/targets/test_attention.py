"""Fused attention in the ort-cpu engine (targets/attention.py): every encoder family of the
architecture matrix, fp32 and int8, built with attention fused and unfused from the command
line; the two engines agree on padded inputs (1e-5 in fp32; int8: the same products, so within
float rounding of the int8 engine's own outputs). Families whose attention is not the plain
pattern (rotary, disentangled) are left unfused, with the reason in engine.json."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests import hf_families

pytestmark = [pytest.mark.slow, pytest.mark.hf]

FUSED = {"Attention", "QAttention", "MultiHeadAttention"}
ENCODERS = [f for f in hf_families.FAMILIES if f.name not in
            ("gpt2", "llama", "qwen2", "convnext", "resnet", "regnet", "mobilenet-v2",
             "efficientnet")]  # fmt: skip
# attention computed otherwise than softmax(Q·Kᵀ·scale + bias)·V on reshaped projections
NOT_PLAIN = {
    "deberta-v2": "disentangled attention reads Q and K for its position terms",
    "modernbert": "rotary position embeddings between the projection and the product",
}


def _engine(cli, model, out, mode):
    r = cli("build", model, "--target", "ort-cpu", "-o", out, "--option", f"attention={mode}")
    assert r.code == 0, r.stderr
    cfg = json.loads((out / "engine.json").read_text())
    return out / cfg["model"], cfg["attention"]


def _run(path, feeds):
    from edgesmith.targets.ort_cpu import SessionSettings, session_from_onnx

    s = session_from_onnx(path, SessionSettings(threads=1))
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})


@pytest.mark.parametrize("family", ENCODERS, ids=lambda f: f.name)
def test_fused_attention_computes_what_the_unfused_graph_does(cli, family, tmp_path):
    hf = hf_families.build(family, tmp_path / "hf")
    assert cli("export", hf, "-o", tmp_path / "onnx").code == 0
    model = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    dims = [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input]  # fmt: skip
    feeds = hf_families.data(dims, n=6)  # token ids with padding at the end of some rows
    np.savez(tmp_path / "data.npz", **hf_families.data(dims, n=16, seed=2))
    r = cli("quantize", tmp_path / "onnx", "-o", tmp_path / "int8", "--calibration",
            tmp_path / "data.npz", "--latency-batches", "off")  # fmt: skip
    assert r.code == 0, r.stderr
    for precision, bound in (("onnx", 1e-5), ("int8", 1e-4)):
        unfused, _ = _engine(cli, tmp_path / precision, tmp_path / f"{precision}-u", "unfused")
        fused, rec = _engine(cli, tmp_path / precision, tmp_path / f"{precision}-f", "fused")
        if family.name in NOT_PLAIN:
            assert rec["blocks"] == 0 and not rec["kept"], rec
            continue
        assert rec["blocks"] >= 1 and rec["kept"], (precision, rec)
        ops = {n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node}
        assert ops & FUSED and "Softmax" not in ops, (precision, ops)
        for a, b in zip(_run(unfused, feeds), _run(fused, feeds), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            scale = max(1.0, float(np.abs(a).max()))
            assert np.abs(a - b).max() <= bound * scale, (precision, np.abs(a - b).max())


def _attention_graph(
    causal: bool, seq: int = 6, heads: int = 2, size: int = 4, window: int = 0,
    scale_last: bool = False,
):  # fmt: skip
    """One attention block as an exporter writes it: Q/K/V MatMul + bias, heads reshaped and
    transposed, Q·Kᵀ / sqrt(H), the additive padding mask (1 - mask) · finfo.min (and a
    causal term), Softmax, the weighted sum, heads merged, the output projection."""
    from onnx import TensorProto, helper, numpy_helper

    d = heads * size
    rng = np.random.default_rng(0)
    init = {f"w{c}": rng.standard_normal((d, d)).astype(np.float32) / 3 for c in "qkvo"}
    init |= {f"b{c}": rng.standard_normal(d).astype(np.float32) / 3 for c in "qkv"}
    init |= {
        "heads": np.array([0, 0, heads, size], np.int64),
        "merged": np.array([0, 0, d], np.int64),
        "root": np.array(np.sqrt(size), np.float32),
        "one": np.array(1.0, np.float32),
        "min": np.array(np.finfo(np.float32).min, np.float32),
        "axes": np.array([1, 2], np.int64),
        "causal": np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None],
    }
    nodes = []
    for c in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"w{c}"], [f"{c}0"]),
            helper.make_node("Add", [f"{c}0", f"b{c}"], [f"{c}1"]),
            helper.make_node("Reshape", [f"{c}1", "heads"], [f"{c}2"]),
            helper.make_node("Transpose", [f"{c}2"], [f"{c}h"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qh", "kt"], ["s0"]),
        helper.make_node("Unsqueeze", ["mask", "axes"], ["m0"]),
        helper.make_node("Cast", ["m0"], ["m1"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m1"], ["m2"]),
        helper.make_node("Mul", ["m2", "min"], ["m3"]),
    ]
    if scale_last:  # (Q·Kᵀ + mask) / sqrt(H): the mask is scaled too
        nodes += [helper.make_node("Add", ["s0", "m3"], ["s1"]),
                  helper.make_node("Div", ["s1", "root"], ["s2"])]  # fmt: skip
    else:
        nodes += [helper.make_node("Div", ["s0", "root"], ["s1"]),
                  helper.make_node("Add", ["s1", "m3"], ["s2"])]  # fmt: skip
    if window:  # a key further than `window` from the query is masked: made from Shape(mask)
        init |= {"zero": np.array(0, np.int64), "step": np.array(1, np.int64),
                 "width": np.array(window, np.int64), "far": np.array(-1e4, np.float32),
                 "near": np.array(0.0, np.float32), "col": np.array([-1, 1], np.int64)}  # fmt: skip
        nodes += [
            helper.make_node("Shape", ["mask"], ["w0"], start=1, end=2),
            helper.make_node("Squeeze", ["w0"], ["w1"]),
            helper.make_node("Range", ["zero", "w1", "step"], ["w2"]),
            helper.make_node("Reshape", ["w2", "col"], ["w3"]),
            helper.make_node("Sub", ["w3", "w2"], ["w4"]),
            helper.make_node("Abs", ["w4"], ["w5"]),
            helper.make_node("Greater", ["w5", "width"], ["w6"]),
            helper.make_node("Where", ["w6", "far", "near"], ["w7"]),
            helper.make_node("Add", ["m3", "w7"], ["m4"]),
        ]
        add = nodes.pop([n.output[0] for n in nodes].index("s2"))
        add.input[1] = "m4"
        nodes.append(add)
    last = "s2"
    if causal:
        nodes.append(helper.make_node("Add", ["s2", "causal"], ["s3"]))
        last = "s3"
    nodes += [
        helper.make_node("Softmax", [last], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["o0"]),
        helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o1", "merged"], ["o2"]),
        helper.make_node("MatMul", ["o2", "wo"], ["y"]),
    ]
    for i, n in enumerate(nodes):
        n.name = f"n{i}_{n.op_type}"
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", d]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", d])],
        [numpy_helper.from_array(v, k) for k, v in init.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimised(model, tmp_path):
    """The graph as the engine build rewrites it: after onnxruntime's offline optimisation."""
    from edgesmith.toolchain.core.ort_session import SessionSettings, ort_session

    onnx.save(model, str(tmp_path / "in.onnx"))
    ort_session(tmp_path / "in.onnx", SessionSettings("extended"), save_to=tmp_path / "opt.onnx")
    out = onnx.load(str(tmp_path / "opt.onnx"))
    for p in tmp_path.iterdir():
        p.unlink()
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["padding", "padding+causal"])
def test_a_padding_mask_becomes_the_key_padding_mask_and_nothing_else_does(causal, tmp_path):
    """A term probed to be the padding mask of `mask` is passed as key_padding_mask; a causal
    term besides it keeps the additive path. Both compute what the graph did, padding anywhere
    in the row."""
    import onnxruntime as ort

    from edgesmith.targets.attention import fuse_attention

    model = _optimised(_attention_graph(causal), tmp_path)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    blocks = fuse_attention(fused)
    assert len(blocks) == 1 and blocks[0].heads == 2 and blocks[0].packed
    assert blocks[0].op == "Attention"  # float, packed: the projection inside the op
    op = next(n for n in fused.graph.node if n.op_type == "Attention")
    padding, bias = (list(op.input) + [""] * 6)[3], (list(op.input) + [""] * 6)[5]
    if causal:
        assert padding == "" and bias != ""
    else:
        assert padding != "" and bias == ""
    split = onnx.ModelProto()  # the same without the whole-block op: MultiHeadAttention
    split.CopyFrom(model)
    assert fuse_attention(split, whole=False)[0].op == "MultiHeadAttention"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 8)).astype(np.float32)
    mask = (rng.random((3, 6)) < 0.6).astype(np.int64)
    mask[:, 0] = 1
    ref, got, mha = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x, "mask": mask}
        )[0]
        for m in (model, fused, split)
    )
    assert np.abs(ref - got).max() < 1e-5 and np.abs(ref - mha).max() < 1e-5


def test_the_build_records_what_it_did_and_why(tmp_path):
    """auto: both graphs timed side by side at batch 1 and 8, the faster kept; unfused: none."""
    from edgesmith.targets.attention import choose
    from edgesmith.toolchain.core.onnx_model import io_from_onnx
    from edgesmith.toolchain.core.ort_session import SessionSettings

    model = _optimised(_attention_graph(False), tmp_path)
    settings = SessionSettings(threads=1, spinning=False)
    _, rec = choose(model, io_from_onnx(model), "auto", settings, tmp_path)
    assert rec["blocks"] == 1 and set(rec["measured"]) == {"1x16", "1x128", "8x128"}
    assert all(m["fused_ms"] > 0 and m["unfused_ms"] > 0 for m in rec["measured"].values())
    assert rec["kept"] == ("not faster" not in rec["why"])
    kept, rec = choose(model, io_from_onnx(model), "unfused", settings, tmp_path)
    assert kept is model and not rec["kept"]
    assert not list(tmp_path.iterdir())  # the timed copies are removed


def test_what_would_compute_otherwise_is_not_fused_or_not_taken_for_a_padding_mask(tmp_path):
    """A scale after the mask's Add (it scales the mask too) is left unfused; a window built
    from the mask's length is not taken for the padding mask (the probe's long length)."""
    from edgesmith.targets.attention import fuse_attention

    scaled = _optimised(_attention_graph(False, scale_last=True), tmp_path)
    assert fuse_attention(scaled) == []
    windowed = _optimised(_attention_graph(False, window=64), tmp_path)
    fused = onnx.ModelProto()
    fused.CopyFrom(windowed)
    (block,) = fuse_attention(fused)
    op = next(n for n in fused.graph.node if n.op_type == block.op)
    assert block.op == "Attention" and op.input[3] == "" and op.input[5] != ""
