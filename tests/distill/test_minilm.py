"""A 3-layer student derived from the packaged all-MiniLM-L6-v2, through distill → export."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest

from edgesmith.calibration.sentences import split_sentences

INHERITED = ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
             "sentence_bert_config.json", "special_tokens_map.json")  # fmt: skip


@pytest.mark.slow
def test_minilm_student_keeps_the_teachers_files_and_exports_like_it(minilm, tmp_path):
    from edgesmith.toolchain import pipeline
    from edgesmith.toolchain.core.recipe import recipe_from_dict
    from edgesmith.toolchain.models.hf import HfRunner, load_hf

    train, held_out = split_sentences()
    (tmp_path / "train.txt").write_text("\n".join(train[:240]) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(held_out[:48]) + "\n")
    recipe = recipe_from_dict(
        {
            "out": str(tmp_path / "run"),
            "source": {"model": str(minilm)},
            "stages": [
                {"kind": "distill", "student_layers": 3, "data": str(tmp_path / "train.txt"),
                 "eval_data": str(tmp_path / "eval.txt"), "epochs": 1, "batch_size": 16,
                 "lr": 5e-4, "hidden_weight": 1.0, "seq_len": 64},
                {"kind": "export", "check_samples": 1},
            ],
        }
    )  # fmt: skip
    logs: list[str] = []
    report = pipeline.run(recipe, emit=logs.append)

    student = report.stages[0].out
    config = json.loads((student / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["architectures"] == ["BertModel"]
    for name in INHERITED:
        assert filecmp.cmp(student / name, minilm / name, shallow=False), name
    manifest = json.loads((student / "manifest.json").read_text())
    assert manifest["artifact"]["format"] == "hf"
    assert manifest["artifact"]["meta"]["keep_layers"] == [0, 2, 5]
    m = manifest["metrics"]
    assert m["loss"] == "embedding" and m["output"] == "sentence_embedding"
    assert "hidden" in m["history"][0]["parts"] and m["metric_name"] == "cosine"
    assert any("teacher layers [0, 2, 5]" in line for line in logs)

    # It loads as a sentence-transformers model (mean pooling, normalised) like the teacher.
    hf = load_hf(student)
    assert hf.library == "sentence_transformers"
    from edgesmith.calibration.sources import tokenize

    feeds = tokenize(held_out[:16], minilm, 64, ["input_ids", "attention_mask"])
    s = HfRunner(hf).infer(feeds)["sentence_embedding"]
    t = HfRunner(load_hf(minilm)).infer(feeds)["sentence_embedding"]
    assert np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-4)
    assert float(np.mean(np.sum(s * t, axis=1))) > 0.7

    onnx_dir = report.stages[1].out
    import onnx

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    assert "sentence_embedding" in [o.name for o in model.graph.output]
    assert (onnx_dir / "tokenizer.json").is_file()


@pytest.mark.slow
def test_a_per_token_output_is_refused(minilm, tmp_path):
    from edgesmith.toolchain.core.errors import InvalidInput
    from edgesmith.toolchain.distill.stage import DistillStage
    from edgesmith.toolchain.models.source import SourceSpec, resolve_source
    from edgesmith.toolchain.training.setup import prepare

    (tmp_path / "t.txt").write_text("One sentence here.\nAnd another one there.\n")
    spec = SourceSpec(str(minilm))
    cfg = DistillStage(
        student_layers=3, data=str(tmp_path / "t.txt"), eval_data=str(tmp_path / "t.txt"),
        output="token_embeddings",
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="sequence axis"):
        prepare(resolve_source(spec), cfg, lambda _m: None)
