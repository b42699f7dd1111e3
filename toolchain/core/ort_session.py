"""The one way edgesmith opens an onnxruntime session: engine builds and loads,
calibration, sensitivity, validate and bench all measure the graph the engine runs.

onnxruntime is imported when a session is made, not with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.errors import InvalidInput

OPT_LEVELS = ("disable", "basic", "extended", "all")
DEFAULT_OPT_LEVEL = "all"
# onnxruntime's CPU SkipLayerNormalization kernel is 2-7x slower than the Add and
# LayerNormalization it replaces (benchmarks/ort_fusions.py; onnxruntime 1.32: 1.94 vs 0.30 ms
# at [8, 128, 384]), and the fusion fires on int8 BERT graphs: our sessions skip it, offline
# and at load time. engine.json records the list so the device does the same.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def opt_level(name: str):
    import onnxruntime as ort

    levels = dict(
        zip(
            OPT_LEVELS,
            (
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            ),
            strict=True,
        )
    )
    if name not in levels:
        raise InvalidInput(f"unknown opt_level '{name}'; available: {', '.join(levels)}")
    return levels[name]


@dataclass(frozen=True)
class SessionSettings:
    """How a session optimises and runs its graph (what engine.json records, so the device
    loads an engine as it was built).

    level: onnxruntime's graph optimisation level (OPT_LEVELS).
    threads: intra-op threads of this session (None: one per physical core); set per session,
        never process-wide.
    disabled: the graph optimizers (fusions) the session skips.
    spinning: whether idle intra-op threads spin (onnxruntime's default) or sleep. Sessions
        timed side by side in one process are made with it off: the idle session's spinning
        threads take the cores from the one being timed (on a 2-core host the digits CNN's
        pruned/unpruned ratio at batch 64 measured 0.63-1.09x over four runs with spinning,
        0.77-0.80x without).
    config: session config entries, (key, value) pairs (e.g. session.save_model_format = ORT).
    """

    level: str = DEFAULT_OPT_LEVEL
    threads: int | None = None
    disabled: tuple[str, ...] = DISABLED_OPTIMIZERS
    spinning: bool = True
    config: tuple[tuple[str, str], ...] = ()


def ort_session(
    path: Path,
    settings: SessionSettings = SessionSettings(),
    *,
    save_to: Path | None = None,
    providers: list[Any] | None = None,
    profile: Path | None = None,
) -> Any:
    """An onnxruntime session on `path` with `settings`, on the CPU unless `providers` says
    otherwise (onnxruntime's list: names or (name, options) pairs, in order of preference).

    save_to: also write the optimised model there (an engine build). profile: run
    onnxruntime's profiler, its JSON trace written with this prefix at end_profiling().
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = opt_level(settings.level)
    if settings.threads:
        so.intra_op_num_threads = settings.threads
        so.inter_op_num_threads = 1
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    if profile is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile)
    if not settings.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in settings.config:
        so.add_session_config_entry(key, value)
    so.log_severity_level = 3
    return ort.InferenceSession(
        str(path),
        sess_options=so,
        providers=providers or ["CPUExecutionProvider"],
        disabled_optimizers=list(settings.disabled),
    )
