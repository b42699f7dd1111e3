"""Helpers shared by the benchmark scripts: interleaved timing with medians, sentences."""

from __future__ import annotations

from pathlib import Path

from edgesmith.toolchain.core.timing import interleaved  # noqa: F401  (the one timer, re-exported here)


def isa() -> str:
    """The host's instruction set as every benchmark prints it: arch, the ort-cpu preset it
    gets and why, and the int8-relevant flags."""
    from edgesmith.targets.ort_cpu import cpu_preset as cpu_preset_name
    from edgesmith.toolchain.core.presets import detect_isa

    i = detect_isa()
    name, why = cpu_preset_name(i)
    flags = ", ".join(sorted(i.flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                        "amx_int8"}))  # fmt: skip
    return f"{i.arch}, {why} ({flags}); preset {name}"


def held_out_sentences(n: int) -> list[str]:
    """n real English sentences (stdlib docstrings, the held-out modules), deterministic."""
    from edgesmith.calibration.sentences import split_sentences

    return split_sentences(held_out=0.2, seed=0)[1][:n]


RECORDS = Path(__file__).resolve().parent / "records"


def record(name: str, figures: dict, goals: list[dict] | None = None) -> Path:
    """Write benchmarks/records/NAME.json: every figure with what it was measured on (CPU
    model and instruction set, cores, library versions, the commit and whether the tree had
    changes, the date, the command) and the goals, each with its figure and whether it is met.
    The documentation's benchmark page is rendered from these records
    (tools/docs_reference.py), and the README's figures are checked against them (tests)."""
    import datetime
    import json
    import os
    import platform
    import subprocess
    import sys
    from importlib import metadata

    from edgesmith.toolchain.core.presets import detect_isa

    root = RECORDS.parent.parent

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    versions = {}
    for pkg in ("edgesmith", "torch", "onnxruntime", "onnx", "transformers", "optimum-onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    cpu = ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
                    if ln.startswith("model name")), "")  # fmt: skip
    data = {
        "benchmark": name,
        "command": " ".join(["python", os.path.relpath(sys.argv[0], root), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "tree_changed": bool(git("status", "--porcelain", "--untracked-files=no")),
        "host": {
            "cpu": cpu or platform.processor(),
            "cores": os.cpu_count(),
            "isa": isa(),
            **detect_isa().summary(),
        },  # fmt: skip
        "versions": {"python": platform.python_version(), **versions},
        "figures": figures,
        "goals": goals or [],
    }
    RECORDS.mkdir(exist_ok=True)
    path = RECORDS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    print(f"record: {path.relative_to(root)}")
    return path


def goal(what: str, value: float, op: str, bound: float) -> dict:
    """One goal of a record: `value op bound` (op: "<=" or ">="), met or not."""
    met = value <= bound if op == "<=" else value >= bound
    return {"goal": what, "value": value, "op": op, "bound": bound, "met": met}


def sparsity_figures(report: dict) -> dict:
    """What a weight-sparsity benchmark records of one prune report: the weights zero, the
    recovery's budget (epochs chosen and run, the rate and why), its wall time, the xz size
    against the dense model, soft movement's schedule and the stage's warning."""
    rec, audit = report["recovery"], report["audit"]
    return {
        "weight_sparsity": audit["weight_sparsity"],
        "epochs_run": len(rec["history"]),
        "epochs_chosen": rec["settings"]["epochs"],
        "lr": rec["settings"]["lr"],
        "lr_from": rec["settings"]["lr_from"],
        "recovery_seconds": round(sum(h["seconds"] for h in rec["history"]), 1),
        "xz_ratio": audit["bytes"]["xz"] / report["dense_bytes"]["xz"],
        "schedule": report.get("schedule"),
        "warning": report.get("warning"),
    }


def sh(*args) -> None:
    """Run a command (an `edgesmith` step) from the repository root, offline, output hidden."""
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = RECORDS.parent.parent
    subprocess.run([str(a) for a in args], check=True, cwd=root, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def nearest(e):
    """Each row's nearest other row by cosine (the same-nearest-neighbour figure)."""
    import numpy as np

    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)
