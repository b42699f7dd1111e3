"""The architecture matrix: every family of tests/hf_families.py, built as a tiny random-init
model, goes export → quantize → build → validate from the command line (structured prune
where the family has an encoder stack it applies to); the others' prune exits 2 with a reason,
never an internal error. EDGESMITH_EXPORTER picks the exporter (CI runs optimum's on
transformers 4)."""

from __future__ import annotations

import os

import pytest

from tests import hf_families

EXPORTER = os.environ.get("EDGESMITH_EXPORTER", "torch")
pytestmark = [pytest.mark.slow, pytest.mark.hf]
# What optimum-onnx 0.1.0's exporter cannot do, each an exit 2 with its reason (docs/support.md):
# DINOv2 fails inside optimum; its Llama and Qwen2 graphs hold onnxruntime's
# SimplifiedLayerNormalization in the ONNX domain, which the build's strict check refuses.
OPTIMUM_CANNOT = {"dinov2": "export", "llama": "build", "qwen2": "build"}


@pytest.mark.parametrize("family", hf_families.FAMILIES, ids=lambda f: f.name)
def test_family_from_the_command_line(cli, family, tmp_path):
    outcomes = hf_families.run_family(cli, family, tmp_path, EXPORTER)
    stuck = OPTIMUM_CANNOT.get(family.name) if EXPORTER == "optimum" else None
    if stuck:
        assert outcomes[stuck].code == 2, outcomes[stuck]
        assert list(outcomes)[-1] == stuck and outcomes[stuck].message.startswith("edgesmith:")
        return
    failed = {k: o.message for k, o in outcomes.items() if o.code != 0}
    assert not failed, failed
    expected = ["export", "quantize", "build", "validate"]
    if family.structured:
        expected.insert(1, "prune")
    assert list(outcomes) == expected
    report = (tmp_path / "report" / "report.json").read_text()
    assert '"passed": true' in report


def test_prune_of_a_family_it_does_not_apply_to_says_why(cli, tmp_path):
    """Llama's decoder layers need position embeddings besides their input: exit 2, one line."""
    import numpy as np

    hf = hf_families.build(hf_families.BY_NAME["qwen2"], tmp_path / "hf")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input_ids=rng.integers(3, 90, (8, 12)),
             attention_mask=np.ones((8, 12), np.int64))  # fmt: skip
    r = cli("prune", hf, "-o", tmp_path / "p", "--data", tmp_path / "d.npz", "--heads", "0.5")
    assert r.code == 2, r.stderr
    assert "nothing prunable" in r.stderr and "Qwen2DecoderLayer" in r.stderr
    assert not (tmp_path / "p").exists()


def test_bad_hugging_face_input_exits_2_with_nothing_written(cli, tmp_path):
    """Custom code in config.json, an unknown task: one line each, nothing written."""
    import json

    hf = hf_families.build(hf_families.BY_NAME["bert"], tmp_path / "hf")
    r = cli("export", hf, "-o", tmp_path / "a", "--task", "summarisation")
    assert r.code == 2 and "unknown task 'summarisation'" in r.stderr
    config = json.loads((hf / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (hf / "config.json").write_text(json.dumps(config))
    r = cli("export", hf, "-o", tmp_path / "b")
    assert r.code == 2 and "custom code (auto_map)" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
