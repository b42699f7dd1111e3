"""export: factories, .pt2 programs, Hugging Face folders; the check against the source."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import tree_digest


def _inputs(path):
    m = onnx.load(str(path))
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in m.graph.input
    }


def test_factory_with_family_spec(cli, tiny, tmp_path):
    out = tmp_path / "onnx"
    before = tree_digest(tiny)
    r = cli("export", "tests.models:tiny_mlp", "--weights", tiny / "tiny.safetensors", "-o", out)
    assert r.code == 0, r.stderr
    assert _inputs(out / "model.onnx") == {"x": ["batch", 12]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx"}
    (check,) = manifest["metrics"]["check"]
    assert check["name"] == "logits" and check["ok"] and check["max_abs"] < 1e-5
    assert manifest["artifact"]["parent"]  # provenance: the source's hash
    assert tree_digest(tiny) == before  # inputs untouched


def test_flags_override_spec_and_opset(cli, tiny, tmp_path):
    out = tmp_path / "onnx"
    r = cli(
        "export",
        "tests.models:tiny_mlp",
        "--weights",
        tiny / "tiny.safetensors",
        "--input",
        "x:3x12",
        "--opset",
        "17",
        "-o",
        out,
    )
    assert r.code == 0, r.stderr
    m = onnx.load(str(out / "model.onnx"))
    assert _inputs(out / "model.onnx") == {"x": [3, 12]}  # no --dynamic: static
    assert {o.domain: o.version for o in m.opset_import}[""] == 17


def test_two_inputs_two_outputs(cli, tmp_path):
    from safetensors.torch import save_file

    from tests.models import two_inputs

    torch.manual_seed(1)
    save_file(two_inputs().state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "onnx"
    r = cli(
        "export",
        "tests.models:two_inputs",
        "--weights",
        tmp_path / "w.safetensors",
        "--input",
        "x:2x6",
        "--input",
        "y:2x4",
        "--dynamic",
        "x:0",
        "--dynamic",
        "y:0",
        "--output",
        "sum",
        "--output",
        "squashed",
        "-o",
        out,
    )
    assert r.code == 0, r.stderr
    m = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in m.graph.output] == ["sum", "squashed"]
    assert _inputs(out / "model.onnx") == {"x": ["batch", 6], "y": ["batch", 4]}


def test_pt2_program(cli, tmp_path):
    from tests.models import tiny_mlp

    torch.manual_seed(0)
    net = tiny_mlp().eval()
    ep = torch.export.export(
        net, (torch.randn(2, 12),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    out = tmp_path / "onnx"
    r = cli("export", tmp_path / "m.pt2", "-o", out)
    assert r.code == 0, r.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_check_outside_tolerance_fails_with_figures(cli, digits, tmp_path):
    """The check is a gate, not a warning: float32 reordering differs by ~1e-6 > atol 1e-12."""
    out = tmp_path / "onnx"
    r = cli(
        "export",
        "examples.digits:make_model",
        "--weights",
        digits / "model.safetensors",
        "--atol",
        "1e-12",
        "--rtol",
        "0",
        "-o",
        out,
    )
    assert r.code == 1
    assert "logits: max abs" in r.stderr and "max rel" in r.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".onnx.tmp-*"))


def test_hf_tiny_bert_classification(cli, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    src = tmp_path / "bert"
    BertForSequenceClassification(cfg).save_pretrained(src, safe_serialization=True)
    out = tmp_path / "onnx"
    r = cli("export", src, "-o", out)
    assert r.code == 0, r.stderr
    m = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in m.graph.output] == ["logits"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["meta"]["task"] == "text-classification"
    assert manifest["metrics"]["check"][0]["max_abs"] < 1e-4


@pytest.mark.slow
def test_hf_minilm_feature_extraction(cli, minilm, tmp_path):
    out = tmp_path / "onnx"
    before = tree_digest(minilm)
    r = cli("export", minilm, "-o", out)
    assert r.code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    figures = {f["name"]: f for f in manifest["metrics"]["check"]}
    assert set(figures) == {"token_embeddings", "sentence_embedding"}
    assert all(f["max_abs"] <= 1e-4 for f in figures.values())
    assert (out / "tokenizer.json").exists()  # the tokenizer travels with the model
    assert tree_digest(minilm) == before
