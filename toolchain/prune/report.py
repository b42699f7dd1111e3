"""prune.png: what each layer kept, and every point the latency search tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> Path:
    # a Figure of its own (no pyplot): no process-wide backend
    from matplotlib.figure import Figure

    layers = report["layers"]
    search = report.get("latency_search")
    fig = Figure(figsize=(10 if search else 6, 3.6))
    axes = fig.subplots(1, 2 if search else 1, squeeze=False)[0]
    ax = axes[0]
    idx = [row["layer"] for row in layers]
    heads = [_fraction(row["heads"]) for row in layers]
    ffn = [_fraction(row["ffn"]) for row in layers]
    ax.bar([i - 0.2 for i in idx], heads, 0.4, label="heads kept", color="#2e86c1")
    ax.bar([i + 0.2 for i in idx], ffn, 0.4, label="FFN neurons kept", color="#e67e22")
    ax.set_xlabel("layer")
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
        ax.set_xlabel("fraction of heads and FFN neurons pruned")
        ax.set_ylabel(f"engine latency / unpruned (batch {search['batch']})")
        ax.legend(fontsize=7)
        ax.set_title("latency search", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _fraction(text: str) -> float:
    kept, total = (int(x) for x in text.split("/"))
    return kept / total if total else 0.0
