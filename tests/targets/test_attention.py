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
        assert "MultiHeadAttention" in ops and "Softmax" not in ops, (precision, ops)
        for a, b in zip(_run(unfused, feeds), _run(fused, feeds), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            scale = max(1.0, float(np.abs(a).max()))
            assert np.abs(a - b).max() <= bound * scale, (precision, np.abs(a - b).max())
