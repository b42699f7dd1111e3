"""Adding a target is one module and one registration: a toy target builds, quantizes,
validates and benches through the same commands as the built-in ones."""

from __future__ import annotations

import json

import numpy as np


def test_a_toy_target_through_every_command(cli, tiny, tmp_path, monkeypatch):
    from edgesmith.toolchain.core import registry

    monkeypatch.setitem(registry.TARGETS, "toy", "tests.targets.toy_target:Toy")
    src = ["tests.models:tiny_mlp", "--weights", tiny / "tiny.safetensors"]
    assert cli("export", *src, "-o", tmp_path / "onnx").code == 0
    r = cli("quantize", tmp_path / "onnx", "-o", tmp_path / "int8", "-t", "toy",
            "--calibration", tiny / "data.npz", "--latency-batches", "off")  # fmt: skip
    assert r.code == 0, r.stderr
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["metrics"]["preset"]["name"] == "toy-int8"
    r = cli("build", tmp_path / "int8", "-t", "toy", "-o", tmp_path / "engine")
    assert r.code == 0, r.stderr
    assert json.loads((tmp_path / "engine" / "engine.json").read_text())["target"] == "toy"
    r = cli("validate", tmp_path / "engine", "--reference", tmp_path / "onnx",
            "--data", tiny / "data.npz", "--metric", "agreement", "--max-drop", "0.2",
            "-o", tmp_path / "report")  # fmt: skip
    assert r.code == 0, r.stderr
    r = cli("bench", tmp_path / "engine", "-t", "toy", "-o", tmp_path / "bench", "--batch", "1")
    assert r.code == 0, r.stderr
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert rows[0]["batch"] == 1 and np.isfinite(rows[0]["p50"])
