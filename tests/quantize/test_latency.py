"""The latency-aware fallback (toolchain/quantize/latency.py): int8 stays only where the engine
is not slower for it. The decisions are tested with an injected timer whose figures follow
which nodes a candidate model quantizes (timing a 2-core test host would be a coin toss);
one test times real engines and checks only what must hold whatever the host."""

from __future__ import annotations

import json

import onnx
import pytest

from edgesmith.toolchain.quantize import latency
from edgesmith.toolchain.quantize.qdq import quantized_nodes

FC_COST = 0.3  # the fc layer in int8 makes the engine 30% slower, the convs 5% faster each


def _fake_ratios(self, *paths):
    """1.0 plus FC_COST if fc is quantized, minus 0.05 per quantized conv, at every batch."""
    out = []
    for p in paths:
        q = set(quantized_nodes(onnx.load(str(p))))
        r = 1.0 + FC_COST * ("fc" in q) - 0.05 * len({"conv1", "conv2"} & q)
        out.append({b: round(r, 4) for b in self.feeds})
    return out


def _quantize(cli, conv_net, out, *flags):
    r = cli("quantize", conv_net["model"], "-o", out, "--calibration", conv_net["calib"],
            "--latency-batches", "1,8", *flags)  # fmt: skip
    assert r.code == 0, r.stderr
    return json.loads((out / "report.json").read_text())


def test_a_node_that_does_not_pay_is_kept_in_float(cli, conv_net, tmp_path, monkeypatch):
    monkeypatch.setattr(latency.EngineTimer, "ratios", _fake_ratios)
    report = _quantize(cli, conv_net, tmp_path / "q")
    lat = report["latency"]
    assert lat["int8_over_fp32"] == {"1": 1.2, "8": 1.2}  # all int8: slower
    assert lat["float_nodes"] == ["fc"]  # the one that does not pay, and nothing else
    assert lat["final_int8_over_fp32"] == {"1": 0.9, "8": 0.9}
    assert [t["kept_float"] for t in lat["trials"]] == [False, True]  # the convs stay int8
    q = quantized_nodes(onnx.load(str(tmp_path / "q" / "model.onnx")))
    assert "fc" not in q and {"conv1", "conv2"} <= set(q)
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "mixed"
    assert lat["isa"]["arch"]  # the report names the host it was measured on


def test_int8_that_never_pays_leaves_the_model_fp32(cli, conv_net, tmp_path, monkeypatch):
    def always_slower(self, *paths):
        return [{b: 1.25 for b in self.feeds} for _ in paths]

    monkeypatch.setattr(latency.EngineTimer, "ratios", always_slower)
    report = _quantize(cli, conv_net, tmp_path / "q")
    assert "stays fp32" in report["latency"]["verdict"] and "stays fp32" in report["summary"]
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert not quantized_nodes(model)
    assert not [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "fp32"


def test_no_check_when_int8_is_already_faster(cli, conv_net, tmp_path, monkeypatch):
    monkeypatch.setattr(latency.EngineTimer, "ratios",
                        lambda self, *p: [{b: 0.7 for b in self.feeds} for _ in p])  # fmt: skip
    lat = _quantize(cli, conv_net, tmp_path / "q")["latency"]
    assert lat["trials"] == [] and lat["float_nodes"] == []


def test_segments_take_the_pass_through_ops_with_their_product(conv_net):
    model = onnx.load(str(conv_net["model"]))
    nodes = ["conv1", "relu1", "conv2", "relu2", "fc"]
    segs = latency.segments(model, latency.weight_sizes(model, nodes))
    assert segs["conv1"] == ["conv1", "relu1"] and segs["fc"] == ["fc"]
    groups = latency.trial_groups(model, nodes)
    assert {g[0] for g in groups[:2]} == {"all Conv", "all Gemm"}
    assert ("conv1", ["conv1", "relu1"]) in groups  # then single segments


def test_bad_latency_batches_are_refused(cli, conv_net, tmp_path):
    r = cli("quantize", conv_net["model"], "-o", tmp_path / "q", "--calibration",
            conv_net["calib"], "--latency-batches", "1,x")  # fmt: skip
    assert r.code == 2 and "--latency-batches '1,x'" in r.stderr


@pytest.mark.slow
def test_real_engines_ship_int8_only_if_not_slower(cli, conv_net, tmp_path):
    """Real timing on this host: whatever it decides, a shipped int8 model measured no slower
    than fp32 at every batch, and an fp32 result says int8 never paid."""
    lat = _quantize(cli, conv_net, tmp_path / "q")["latency"]
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    if quantized_nodes(model):
        assert max(lat["final_int8_over_fp32"].values()) <= 1.0
    else:
        assert "stays fp32" in lat["verdict"]
        assert json.loads((tmp_path / "q" / "manifest.json").read_text())["artifact"][
            "precision"] == "fp32"  # fmt: skip


def test_a_model_with_every_node_in_float_is_called_fp32(cli, conv_net, tmp_path, monkeypatch):
    """Each step pays, and the last leaves nothing in int8: that is the fp32 model, said so."""

    def each_node_costs(self, *paths):
        out = []
        for p in paths:
            q = set(quantized_nodes(onnx.load(str(p))))
            r = 0.95 + 0.1 * len({"conv1", "conv2", "fc"} & q)
            out.append({b: round(r, 4) for b in self.feeds})
        return out

    monkeypatch.setattr(latency.EngineTimer, "ratios", each_node_costs)
    report = _quantize(cli, conv_net, tmp_path / "q")
    assert report["latency"]["verdict"].startswith("every quantized product went back to float")
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "fp32"


def test_after_the_accuracy_loop_the_check_floats_more_and_gates_again(
    cli, outlier_mlp, tmp_path, monkeypatch
):
    """The loop puts fc2 back to pass the gate; the check then finds fc1 slower in int8: the
    model ships fp32, gated again, and the loop's own record is left as the loop wrote it."""

    def fc1_costs(self, *paths):
        return [{b: 1.3 if "fc1" in quantized_nodes(onnx.load(str(p))) else 0.9
                 for b in self.feeds} for p in paths]  # fmt: skip

    monkeypatch.setattr(latency.EngineTimer, "ratios", fc1_costs)
    out = tmp_path / "q"
    r = cli("quantize", outlier_mlp["model"], "-o", out, "--calibration", outlier_mlp["calib"],
            "--outlier-ratio", "0", "--smooth-alpha", "0", "--eval", outlier_mlp["eval"],
            "--metric", "agreement", "--max-drop", "0.02", "--latency-batches", "1")  # fmt: skip
    assert r.code == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["fallback"]["float_nodes"] == ["fc2"]  # not extended by the latency check's
    assert rep["latency"]["float_nodes"] == ["fc1"]
    assert rep["gate"]["after_latency"]["passed"]
    assert "stays fp32" in rep["summary"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "fp32"


def test_a_recipe_with_a_batch_below_1_is_refused():
    from pydantic import ValidationError

    from edgesmith.toolchain.quantize.stage import QuantizeStage

    with pytest.raises(ValidationError):
        QuantizeStage(method="dynamic", latency_batches=[1, 0])
    assert QuantizeStage(method="dynamic", latency_batches=[]).latency_batches == []


def test_text_is_timed_at_its_own_length_and_padded():
    """For text (an attention mask in the data) each batch is timed at the data's median
    length, rounded up to a multiple of 8, and at the padded length, or at the lengths given;
    data without a mask is timed by batch alone."""
    import numpy as np

    from edgesmith.calibration.sources import Dataset
    from edgesmith.toolchain.core.errors import InvalidInput

    lengths = [10, 12, 14, 30, 40]
    mask = np.array([[1] * n + [0] * (128 - n) for n in lengths], dtype=np.int64)
    ids = np.where(mask == 1, 7, 0)
    data = Dataset({"input_ids": ids, "attention_mask": mask})
    feeds = latency.feeds_from(data, [1, 8])
    assert list(feeds) == ["1x16", "1x128", "8x16", "8x128"]
    assert feeds["8x16"]["input_ids"].shape == (8, 16)
    assert feeds["1x128"]["attention_mask"].shape == (1, 128)
    assert latency.shape_label("8x16") == "batch 8, seq 16" and latency.shape_label(8) == "batch 8"
    assert list(latency.feeds_from(data, [2], [32, 64])) == ["2x32", "2x64"]
    with pytest.raises(InvalidInput, match="longer than the data's sequences"):
        latency.feeds_from(data, [1], [256])
    plain = Dataset({"x": np.zeros((4, 3), np.float32)})
    assert list(latency.feeds_from(plain, [1, 8])) == [1, 8]
    with pytest.raises(InvalidInput, match="no attention mask"):
        latency.feeds_from(plain, [1], [16])
