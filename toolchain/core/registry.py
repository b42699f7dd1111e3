"""Named plug-ins, resolved lazily so `edgesmith --help` never imports a heavy package."""

from __future__ import annotations

import importlib
from typing import Any

from edgesmith.toolchain.core.errors import InvalidInput

TARGETS: dict[str, str] = {
    "ort-cpu": "edgesmith.targets.ort_cpu:OrtCpu",
    "trt-gpu": "edgesmith.targets.tensorrt_gpu:TrtGpu",
    "ort-gpu": "edgesmith.targets.ort_gpu:OrtGpu",
}


def load_object(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def target_names() -> list[str]:
    return list(TARGETS)


def get_target(name: str) -> Any:
    """An instance of the named target; an unknown name lists the known ones."""
    if name not in TARGETS:
        known = []
        for n in TARGETS:
            why = load_object(TARGETS[n])().unavailable_reason()
            known.append(f"{n} (unavailable: {why})" if why else n)
        raise InvalidInput(f"unknown target '{name}'; available: {', '.join(known)}")
    return load_object(TARGETS[name])()
