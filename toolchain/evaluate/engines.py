"""ort-cpu engines timed side by side: the one way prune's latency search, quantize's latency
check and the benchmarks measure what a change buys on the engine that ships. Each model is
built by the ort-cpu target (the build `edgesmith build` makes), loaded with intra-op spinning
off (core/ort_session.py says why), and every engine is timed at each batch in one interleave
(core/timing.py: side_by_side; medians)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.targets.base import BuildConfig
from edgesmith.targets.ort_cpu import OrtCpu
from edgesmith.toolchain.core.artifact import Format, ModelArtifact
from edgesmith.toolchain.core.timing import side_by_side

Feeds = dict[str, np.ndarray]


def build_engine(model: Path, directory: Path, threads: int | None) -> Path:
    """The ort-cpu engine of an ONNX file, built into `directory`."""
    import onnx

    from edgesmith.toolchain.core.onnx_model import io_from_onnx

    directory.mkdir(parents=True, exist_ok=True)
    io = io_from_onnx(onnx.load(str(model), load_external_data=False))
    art = ModelArtifact(model, Format.onnx, io=io)
    OrtCpu().build(art, BuildConfig({"threads": threads} if threads else {}), directory)
    return directory


def timed_runner(engine_dir: Path, threads: int | None) -> Any:
    """An ort-cpu engine loaded to be timed beside others in this process: its options as
    engine.json records them, intra-op spinning off."""
    return OrtCpu().load(ModelArtifact(Path(engine_dir), Format.engine), threads=threads,
                         spinning=False)  # fmt: skip


def engine_runner(model: Path, threads: int | None, workdir: Path | None = None) -> Any:
    """timed_runner() of a model's ort-cpu engine built in a temporary directory (the loaded
    session holds the model in memory; the directory is removed)."""
    out = Path(tempfile.mkdtemp(prefix="engine-", dir=workdir))
    try:
        return timed_runner(build_engine(model, out, threads), threads)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def time_engines(runners: dict[str, Any], feeds: dict[int, Feeds], rounds: int) -> dict[int, dict]:
    """batch → {name: median ms per call}: every runner timed in one interleave per batch."""
    out = {}
    for batch, f in feeds.items():
        fns = {name: (lambda r=r, f=f: r.infer(f)) for name, r in runners.items()}
        out[batch] = {k: round(v, 4) for k, v in side_by_side(fns, rounds).items()}
    return out
