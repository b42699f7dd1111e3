"""The export stage: a PyTorch or Hugging Face source → fp32 ONNX, checked against the source."""

from __future__ import annotations

from pathlib import Path

import onnx

from targets.ort_cpu import runner_from_onnx
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.errors import InvalidInput
from toolchain.core.onnx_model import check_onnx, io_from_onnx, onnx_digest
from toolchain.core.recipe import ExportStage
from toolchain.export.checks import check_against_source
from toolchain.export.source import torch_spec

MODEL_FILE = "model.onnx"


def checked_export(path: Path, reference, samples: list, cfg: ExportStage):
    """onnx.checker with strict shape inference, and the outputs against the source.

    The checker (C++, one thread, ~0.3 s on MiniLM) runs in a thread beside the onnxruntime
    session and the comparison; a model the checker rejects is reported as such, even when
    onnxruntime failed on it first.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        checker = pool.submit(check_onnx, path, True)
        try:
            io = io_from_onnx(onnx.load(str(path), load_external_data=False))
            exported = runner_from_onnx(path, io=io)
            figures = check_against_source(
                reference, exported, samples, atol=cfg.atol, rtol=cfg.rtol
            )
        except Exception:
            checker.result()  # the checker's InvalidInput first, if it has one
            raise
        return checker.result(), figures


def run(ctx, src: ModelArtifact, cfg: ExportStage, out: Path):
    from toolchain.pipeline import StageResult

    if src.format is Format.hf:
        from toolchain.export.hf import HfRunner, load_hf, onnx_from_hf

        hf = load_hf(src.path, ctx.source.task)
        path = onnx_from_hf(hf, out, cfg.opset)
        reference = HfRunner(hf)
        samples = [
            hf.example(batch=1 + i, seq=16 + 8 * i, seed=i) for i in range(cfg.check_samples)
        ]
        meta = {"task": hf.task, "library": hf.library}
    elif src.format is Format.torch:
        from toolchain.export.torch import TorchRunner, load_torch, onnx_from_torch

        tm = load_torch(torch_spec(src, ctx.source))
        reference = TorchRunner(tm)
        path = onnx_from_torch(tm, out / MODEL_FILE, cfg.opset)
        samples = [tm.example(batch=1 + i, seed=i) for i in range(cfg.check_samples)]
        meta = {"inputs": [d.__dict__ for d in tm.inputs]}
    else:
        raise InvalidInput(
            f"{src.path}: export takes a PyTorch or Hugging Face model; "
            f"this is already {src.format.value}"
        )
    proto, figures = checked_export(path, reference, samples, cfg)
    io = io_from_onnx(proto)
    worst = max(figures, key=lambda f: f["max_abs"])
    art = ModelArtifact(
        path,
        Format.onnx,
        io=io,
        sha256=onnx_digest(path, proto),
        parent=src.sha256,
        meta={"opset": cfg.opset, **meta},
    )
    summary = (
        f"checked against the source on {len(samples)} samples: max abs diff "
        f"{worst['max_abs']:.2e} ({worst['name']}), within atol={cfg.atol} rtol={cfg.rtol}"
    )
    return StageResult(art, {"check": figures, "atol": cfg.atol, "rtol": cfg.rtol}, summary=summary)
