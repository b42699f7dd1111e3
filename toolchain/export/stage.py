"""The export stage: a PyTorch or Hugging Face model → fp32 ONNX, checked against the source.

The model describes itself (ModelArtifact.info: factory, input declarations, task), so an
artifact any stage made exports with no flags and no recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgesmith.toolchain.core.artifact import Format, ModelArtifact, ModelInfo
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.stage import Inputs, Stage, StageConfig, StageResult, Workdir

MODEL_FILE = "model.onnx"


class ExportStage(StageConfig):
    kind: Literal["export"] = "export"
    opset: int = Field(default=18, ge=7, le=23)
    atol: float = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, ge=0)
    check_samples: int = Field(default=2, ge=1)  # each at another batch (and sequence) size
    exporter: Literal["torch", "optimum"] | None = Field(
        default=None,
        description="Hugging Face exporter: torch (torch.onnx dynamo, transformers 4 and 5) or "
        "optimum (optimum-onnx, transformers < 4.58); default torch",
    )


def checked_export(path: Path, reference, samples: list, cfg: ExportStage):
    """onnx.checker with strict shape inference, and the outputs against the source.

    The checker (C++, one thread, ~0.3 s on MiniLM) runs in a thread beside the onnxruntime
    session and the comparison; a model the checker rejects is reported as such, even when
    onnxruntime failed on it first.
    """
    from concurrent.futures import ThreadPoolExecutor

    import onnx

    from edgesmith.targets.ort_cpu import runner_from_onnx
    from edgesmith.toolchain.core.onnx_model import check_onnx, io_from_onnx
    from edgesmith.toolchain.export.checks import check_against_source

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


@dataclass
class Exported:
    """What an exporter made: the ONNX file, a runner of the source to check it against,
    the samples to check on, and what the artifact records (info, meta)."""

    path: Path
    reference: Any
    samples: list[dict[str, Any]]
    info: ModelInfo
    meta: dict[str, Any]


@dataclass
class ExportReport:
    """The export's record (the manifest's metrics): the check against the source, per
    output and sample, and the tolerances it was held to."""

    check: list[dict[str, Any]]
    atol: float
    rtol: float


def _from_hf(src: ModelArtifact, out: Path, cfg: ExportStage) -> Exported:
    from edgesmith.toolchain.models.hf import HfRunner, default_exporter, load_hf, onnx_from_hf

    exporter = cfg.exporter or default_exporter()
    hf = load_hf(src.path, src.info.task)
    path = onnx_from_hf(hf, out, cfg.opset, exporter)
    samples = [hf.example(batch=1 + i, seq=16 + 8 * i, seed=i) for i in range(cfg.check_samples)]
    # the tokenizer and config files are beside model.onnx now (onnx_from_hf)
    tokenizer = str(out) if (out / "tokenizer_config.json").is_file() else src.info.tokenizer
    info = src.info.inherit(task=hf.task, tokenizer=tokenizer)
    meta = {"task": hf.task, "library": hf.library, "exporter": exporter}
    return Exported(path, HfRunner(hf), samples, info, meta)


def _from_torch(src: ModelArtifact, out: Path, cfg: ExportStage) -> Exported:
    from edgesmith.toolchain.models.source import torch_spec
    from edgesmith.toolchain.models.torch import TorchRunner, load_torch, onnx_from_torch

    tm = load_torch(torch_spec(src))  # its output names are fixed here, before the export
    path = onnx_from_torch(tm, out / MODEL_FILE, cfg.opset)
    samples = [tm.example(batch=1 + i, seed=i) for i in range(cfg.check_samples)]
    info = src.info.inherit(outputs=tuple(tm.output_names))
    meta = {"inputs": [d.__dict__ for d in tm.inputs]}
    return Exported(path, TorchRunner(tm), samples, info, meta)


def run(inputs: Inputs, cfg: ExportStage, work: Workdir) -> StageResult:
    from edgesmith.toolchain.core.onnx_model import io_from_onnx, onnx_digest
    from edgesmith.toolchain.core.report import report_json

    src = inputs.model
    if src.format is Format.hf:
        made = _from_hf(src, work.out, cfg)
    elif src.format is Format.torch:
        made = _from_torch(src, work.out, cfg)
    else:
        raise InvalidInput(
            f"{src.path}: export takes a PyTorch or Hugging Face model; "
            f"this is already {src.format.value}"
        )
    proto, figures = checked_export(made.path, made.reference, made.samples, cfg)
    worst = max(figures, key=lambda f: f["max_abs"])
    art = ModelArtifact(
        made.path,
        Format.onnx,
        io=io_from_onnx(proto),
        sha256=onnx_digest(made.path, proto),
        parent=src.sha256,
        info=made.info,
        meta={"opset": cfg.opset, **made.meta},
    )
    summary = (
        f"checked against the source on {len(made.samples)} samples: max abs diff "
        f"{worst['max_abs']:.2e} ({worst['name']}), within atol={cfg.atol} rtol={cfg.rtol}"
    )
    report = ExportReport(figures, cfg.atol, cfg.rtol)
    return StageResult(art, report_json(report), summary=summary)


STAGE = Stage(
    "export",
    ExportStage,
    run,
    command="edgesmith.toolchain.cli.export:command",
    example="edgesmith export mypkg.net:make --weights net.safetensors --input x:1x12 "
    "--dynamic x:0 -o build/onnx",
)
