"""The prune stage's report: report.json (PruneReport) and prune.png (what each layer kept, and
every point the latency search tried)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLOT = "prune.png"


@dataclass
class PruneReport:
    """report.json of the prune stage; a field is left out when its method has no such step
    (structured: importance, layers, latency_search; the weight methods: layer_sparsity,
    audit, schedule)."""

    method: str
    model: str  # the source's format (hf, torch)
    importance: str | None = None
    movement: str | None = None
    latency_search: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    layer_sparsity: dict[str, float] | None = None
    warning: str | None = None
    layers: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    dense_bytes: dict[str, Any] | None = None
    latency_ms: dict[str, Any] | None = None
    latency_ratio: dict[str, float] | None = None
    targets: dict[str, str] | None = None
    plot: str | None = None
    seconds: float | None = None
    name: str = "prune"


@dataclass
class EngineTimes:
    """Two ort-cpu engines timed side by side (prune/latency.py: compare): the record and the
    second's latency over the first's per batch."""

    latency_ms: dict[str, Any]
    latency_ratio: dict[str, float]


def engine_times(ms: dict[str, dict[str, float]], seq, threads, names: tuple[str, str]):
    """EngineTimes of compare()'s figures: `names` (baseline, candidate), the ISA recorded."""
    from edgesmith.toolchain.core.presets import detect_isa

    base, cand = names
    record = {"seq": seq, "threads": threads, "batches": ms, "isa": detect_isa().summary()}
    return EngineTimes(record, {b: round(t[cand] / t[base], 4) for b, t in ms.items()})


UNITS = {"heads": "heads", "ffn": "FFN neurons", "channels": "channels"}
COLORS = ("#2e86c1", "#e67e22", "#27ae60")


def plot(report: PruneReport, path: Path) -> str:
    """Draw prune.png; returns what the report says of it (its name, or why it is not drawn)."""
    try:  # matplotlib is an optional dependency (the dev extra)
        _draw(report, path)
    except ImportError:
        return "not drawn: matplotlib is not installed"
    return path.name


def _draw(report: PruneReport, path: Path) -> None:
    # a Figure of its own (no pyplot): no process-wide backend
    from matplotlib.figure import Figure

    layers = report.layers or []
    search = report.latency_search
    fig = Figure(figsize=(10 if search else 6, 3.6))
    axes = fig.subplots(1, 2 if search else 1, squeeze=False)[0]
    ax = axes[0]
    units = [k for k in UNITS if k in layers[0]]
    width = 0.8 / len(units)
    for j, unit in enumerate(units):
        kept = [_fraction(row[unit]) for row in layers]
        pos = [i - 0.4 + width * (j + 0.5) for i in range(len(layers))]
        ax.bar(pos, kept, width, label=f"{UNITS[unit]} kept", color=COLORS[j % len(COLORS)])
    labels = [str(row.get("layer", row.get("group"))) for row in layers]
    rotation = 30 if "group" in layers[0] else 0
    ax.set_xticks(range(len(layers)), labels, fontsize=7, rotation=rotation)
    ax.set_xlabel("layer" if "layer" in layers[0] else "channel group")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ratio = ", ".join(f"b{b} {r:.2f}x" for b, r in (report.latency_ratio or {}).items())
    ax.set_title(f"kept per layer; engine latency {ratio}", fontsize=9)
    if search:
        ax = axes[1]
        tried = search["tried"]
        ax.plot([p["fraction"] for p in tried], [p["ratio"] for p in tried], "o")
        ax.axhline(search["target_ratio"], color="#c0392b", ls="--", label="target")
        ax.set_xlabel("fraction pruned")
        ax.set_ylabel(f"engine latency / unpruned (batch {search['batch']})")
        ax.legend(fontsize=7)
        ax.set_title("latency search", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fraction(text: str) -> float:
    kept, total = (int(x) for x in text.split("/"))
    return kept / total if total else 0.0
