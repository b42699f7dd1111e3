"""One way to run any model artifact: ONNX, engine directory, PyTorch model, HF folder."""

from __future__ import annotations

from edgesmith.targets.base import Runner, read_engine_config
from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.registry import get_target


def runner_for(art: ModelArtifact, threads: int | None = None) -> Runner:
    """A runner for `art`, from what the artifact says about itself (ModelArtifact.info)."""
    if art.format is Format.onnx:
        from edgesmith.targets.ort_cpu import SessionSettings, runner_from_onnx

        return runner_from_onnx(art.path, SessionSettings(threads=threads))
    if art.format is Format.engine:
        target = get_target(read_engine_config(art.path)["target"])
        return target.load(art, threads=threads)
    if art.format is Format.hf:
        from edgesmith.toolchain.models.hf import HfRunner, load_hf

        return HfRunner(load_hf(art.path, art.info.task), threads=threads)
    from edgesmith.toolchain.models.source import torch_spec
    from edgesmith.toolchain.models.torch import TorchRunner, load_torch

    return TorchRunner(load_torch(torch_spec(art)), threads=threads)
