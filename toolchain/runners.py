"""One way to run any model artifact: ONNX, engine directory, PyTorch source, HF folder."""

from __future__ import annotations

from targets.base import Runner, read_engine_config
from toolchain.core.artifact import Format, ModelArtifact
from toolchain.core.registry import get_target
from toolchain.export.source import SourceSpec, torch_spec


def runner_for(
    art: ModelArtifact, spec: SourceSpec | None = None, threads: int | None = None
) -> Runner:
    """A runner for `art`; PyTorch sources need the spec that names them (factory, shapes)."""
    if art.format is Format.onnx:
        from targets.ort_cpu import runner_from_onnx

        return runner_from_onnx(art.path, threads=threads)
    if art.format is Format.engine:
        target = get_target(read_engine_config(art.path)["target"])
        return target.load(art, threads=threads)
    if art.format is Format.hf:
        from toolchain.export.hf import HfRunner, load_hf

        return HfRunner(load_hf(art.path, (spec.task if spec else None) or art.meta.get("task")))
    from toolchain.export.torch import TorchRunner, load_torch

    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchRunner(
        load_torch(torch_spec(art, spec) if spec else SourceSpec(model=str(art.path)))
    )
