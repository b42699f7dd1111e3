"""Embedding tables as int8 rows with a scale per row (toolchain/quantize/gather.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgesmith.toolchain.quantize.gather import MIN_TABLE_BYTES, int8_rows, quantize_gathers
from tests.quantize import models


def test_rows_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 64)).astype(np.float32) * rng.uniform(0.001, 50, (300, 1))
    w[7] = 0
    q, scale = int8_rows(w)
    assert q.dtype == np.int8 and scale.shape == (300, 1) and np.abs(q).max() <= 127
    err = np.abs(q * scale - w)
    assert (err <= scale / 2 + 1e-7 * np.abs(w)).all()  # half a step of its own row's scale
    assert (q[7] == 0).all() and scale[7, 0] == 1.0
    # a per-table scale would give the small rows nothing: every row keeps ~7 bits here
    small = np.argmin(np.abs(w).max(1)[np.arange(300) != 7])
    assert np.abs(q[small]).max() == 127


def test_the_model_computes_the_same_within_the_steps(tmp_path):
    path = models.embedding_net(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    table = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "table"))
    report = quantize_gathers(model)
    assert [r["table"] for r in report] == ["table"]  # the position table is under 256 KiB
    assert report[0]["fp32_bytes"] >= MIN_TABLE_BYTES
    assert report[0]["int8_bytes"] < report[0]["fp32_bytes"] / 3.9
    names = {i.name for i in model.graph.initializer}
    assert "table" not in names and {"table_int8_rows", "table_row_scales", "pos"} <= names
    onnx.checker.check_model(model)
    ids = np.array([[0, 5, 17, 2047], [3, 3, 1000, 9]], np.int64)
    ref = ort.InferenceSession(str(path)).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})[0]
    _, scale = int8_rows(table)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    bound = (scale[ids] / 2 * np.abs(w).sum(0)).max()  # half a step through the projection
    assert np.abs(got - ref).max() <= bound + 1e-5


def test_excluded_and_shared_tables_stay_float(tmp_path):
    from onnx import helper

    model = onnx.load(str(models.embedding_net(tmp_path / "m.onnx")))
    assert quantize_gathers(onnx.load(str(tmp_path / "m.onnx")), exclude={"word_embeddings"}) == []
    # a table a MatMul also reads (tied weights) is left alone
    model.graph.node.append(helper.make_node("MatMul", ["h", "table_t"], ["tied"], name="tied"))
    model.graph.node.append(helper.make_node("Transpose", ["table"], ["table_t"], name="t"))
    assert quantize_gathers(model) == []


def test_quantize_writes_int8_tables_and_says_so(cli, tmp_path):
    path = models.embedding_net(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", ids=np.random.default_rng(1).integers(0, 2048, (32, 4)))
    r = cli("quantize", path, "-o", tmp_path / "q", "--calibration", tmp_path / "calib.npz")
    assert r.code == 0, r.stderr
    import json

    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["nodes"]["int8_gathers"] == ["word_embeddings"]
    (table,) = report["nodes"]["int8_tables"]  # size beside the accuracy, as rewritten
    assert (table["table"], table["rows"], table["fp32_bytes"]) == ("table", 2048, 2048 * 160 * 4)
    assert table["int8_bytes"] == 2048 * 160 + 2048 * 4
    assert (tmp_path / "q" / "model.onnx").stat().st_size < path.stat().st_size / 3
    r = cli("quantize", path, "-o", tmp_path / "f", "--calibration", tmp_path / "calib.npz",
            "--no-gather-int8")  # fmt: skip
    assert r.code == 0, r.stderr
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["nodes"]["int8_gathers"] == [] and report["nodes"]["int8_tables"] == []
