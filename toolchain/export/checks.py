"""Output checks: an exported model against the model it came from, output by output."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgesmith.targets.base import Runner
from edgesmith.toolchain.core.errors import CheckFailed, InvalidInput


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    ok: bool  # every element within atol + rtol * |reference| (numpy.allclose)


def diff_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    atol: float,
    rtol: float,
) -> list[OutputDiff]:
    out = []
    for name, ref in reference.items():
        if name not in candidate:
            raise InvalidInput(
                f"output '{name}' missing from the candidate (has {list(candidate)})"
            )
        got = candidate[name]
        if got.shape != ref.shape:
            raise CheckFailed(
                f"output '{name}': shape {got.shape} differs from the source's {ref.shape}"
            )
        r, g = ref.astype(np.float64), got.astype(np.float64)
        err = np.abs(g - r)
        rel = err / np.maximum(np.abs(r), np.finfo(np.float32).tiny)
        ok = bool(np.all(err <= atol + rtol * np.abs(r))) and bool(np.isfinite(g).all())
        out.append(OutputDiff(name, float(err.max(initial=0.0)), float(rel.max(initial=0.0)), ok))
    return out


def check_against_source(
    source: Runner,
    exported: Runner,
    samples: list[dict[str, np.ndarray]],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> list[dict]:
    """Run both on every sample; worst figure per output. Outside tolerance: CheckFailed."""
    worst: dict[str, OutputDiff] = {}
    for feeds in samples:
        for d in diff_outputs(source.infer(feeds), exported.infer(feeds), atol, rtol):
            w = worst.get(d.name)
            worst[d.name] = OutputDiff(
                d.name,
                max(d.max_abs, w.max_abs if w else 0.0),
                max(d.max_rel, w.max_rel if w else 0.0),
                d.ok and (w.ok if w else True),
            )
    figures = [asdict(d) for d in worst.values()]
    bad = [d for d in worst.values() if not d.ok]
    if bad:
        detail = "; ".join(
            f"{d.name}: max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g}" for d in bad
        )
        raise CheckFailed(
            f"export differs from the source beyond atol={atol}, rtol={rtol}: {detail}"
        )
    return figures
