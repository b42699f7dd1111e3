"""prune.png: what each layer kept, and every point the latency search tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNITS = {"heads": "heads", "ffn": "FFN neurons", "channels": "channels"}
COLORS = ("#2e86c1", "#e67e22", "#27ae60")


def plot(report: dict[str, Any], path: Path) -> Path:
    # a Figure of its own (no pyplot): no process-wide backend
    from matplotlib.figure import Figure

    layers = report["layers"]
    search = report.get("latency_search")
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
    ratio = ", ".join(f"b{b} {r:.2f}x" for b, r in report.get("latency_ratio", {}).items())
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
    return path


def _fraction(text: str) -> float:
    kept, total = (int(x) for x in text.split("/"))
    return kept / total if total else 0.0
