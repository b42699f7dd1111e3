"""`edgesmith distill`, its recipe stage and torchrun, end to end on digits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesmith.toolchain.training.checkpoints import latest_checkpoint
from tests.conftest import REPO

STUDENT = "examples.digits_student:make_student"
EDGESMITH = Path(sys.executable).parent / "edgesmith"


def distill_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--teacher", "examples.digits:make_model",
        "--weights", str(teacher / "model.safetensors"),
        "--student", STUDENT,
        "--data", str(teacher / "train.npz"),
        "--eval-data", str(teacher / "calib.npz"),
        "-o", str(out),
        *extra,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def student_top1(out: Path, teacher: Path) -> float:
    from safetensors.torch import load_file

    from examples.digits_student import make_student

    net = make_student()
    net.load_state_dict(load_file(str(out / "model.safetensors")))
    with np.load(teacher / "test.npz") as z, torch.inference_mode():
        return float((net.eval()(torch.from_numpy(z["x"])).argmax(1).numpy() == z["labels"]).mean())


def test_distill_writes_a_student_the_export_stage_takes(cli, digits_teacher, tmp_path):
    out = tmp_path / "student"
    args = distill_args(digits_teacher, out, "--epochs", "20", "--patience", "0", "--threads", "1")
    r = cli(*args)
    assert r.code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artifact"]
    assert art["format"] == "torch" and art["path"] == "model.safetensors"
    assert art["info"]["factory"] == STUDENT and art["info"]["inputs"] == ["x:1x1x8x8:float32"]
    m = manifest["metrics"]
    assert m["student_params"] == 3818 and m["param_ratio"] <= 0.10
    assert len(m["history"]) == 20 and m["metric_name"] == "accuracy"
    assert student_top1(out, digits_teacher) >= 0.9
    assert not (tmp_path / ".edgesmith" / "scratch" / "student").exists()

    onnx_out = tmp_path / "onnx"
    r = cli("export", str(out), "-o", str(onnx_out))
    assert r.code == 0, r.stderr
    import onnx

    model = onnx.load(str(onnx_out / "model.onnx"))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert 3818 <= params < 4000  # the student was exported (the teacher has 38,282)


def test_usage_errors_name_what_is_wrong(cli, digits_teacher, tmp_path):
    r = cli(*distill_args(digits_teacher, tmp_path / "a", "--student-layers", "2"))
    assert r.code == 2 and "exactly one of student" in r.stderr
    args = distill_args(digits_teacher, tmp_path / "b")
    args[args.index(STUDENT)] = "tests.distill.factories:five_classes"
    r = cli(*args)
    assert r.code == 2 and "(2, 5)" in r.stderr and "(2, 10)" in r.stderr
    args = distill_args(digits_teacher, tmp_path / "c")
    i = args.index("--student")
    args[i : i + 2] = ["--student-layers", "2"]
    r = cli(*args)
    assert r.code == 2 and "Hugging Face" in r.stderr
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_print_recipe_is_a_distill_stage(cli, digits_teacher, tmp_path):
    r = cli(*distill_args(digits_teacher, tmp_path / "s", "--epochs", "3", "--print-recipe"))
    assert r.code == 0
    assert 'kind = "distill"' in r.stdout and "epochs = 3" in r.stdout
    assert f'student = "{STUDENT}"' in r.stdout


def test_two_processes_finish_with_identical_weights_and_the_same_quality(
    cli, digits_teacher, tmp_path
):
    single = tmp_path / "single"
    # every epoch run (no early stop), so the two runs' last epochs are the same epoch
    fixed = ("--epochs", "15", "--patience", "0")
    r = cli(*distill_args(digits_teacher, single, *fixed, "--threads", "1"))
    assert r.code == 0, r.stderr
    double = tmp_path / "double"
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--no-python", str(EDGESMITH), *distill_args(digits_teacher, double, *fixed)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "distributed: 2 processes (gloo)" in p.stderr
    m2 = json.loads((double / "manifest.json").read_text())["metrics"]
    m1 = json.loads((single / "manifest.json").read_text())["metrics"]
    assert m2["world_size"] == 2 and len(m2["rank_digests"]) == 2
    assert m2["rank_digests"][0] == m2["rank_digests"][1]
    # the range test runs on rank 0 and every process takes its rate: the single run's
    assert m2["settings"]["lr"] == m1["settings"]["lr"]
    # The global batch is split across the processes, so both runs take the same steps.
    assert abs(student_top1(double, digits_teacher) - student_top1(single, digits_teacher)) <= 0.02
    assert (
        abs(m2["history"][-1]["loss"] - m1["history"][-1]["loss"])
        <= 0.05 * m1["history"][-1]["loss"]
    )


def test_recipe_chains_distill_export_build_validate(digits_teacher, tmp_path):
    from edgesmith.toolchain import pipeline
    from edgesmith.toolchain.core.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "distill-chain",
            "out": str(tmp_path / "run"),
            "source": {
                "model": "examples.digits:make_model",
                "weights": str(digits_teacher / "model.safetensors"),
            },
            "stages": [
                {"kind": "distill", "student": STUDENT, "data": str(digits_teacher / "train.npz"),
                 "eval_data": str(digits_teacher / "calib.npz"), "epochs": 40},
                {"kind": "export"},
                {"kind": "build", "target": "ort-cpu"},
                {"kind": "validate", "data": str(digits_teacher / "test.npz"),
                 "metrics": ["accuracy"], "max_drop": {"accuracy": 0.03}},
            ],
        }
    )  # fmt: skip
    report = pipeline.run(recipe, emit=lambda _m: None)
    assert [s.kind for s in report.stages] == ["distill", "export", "build", "validate"]
    assert all(s.passed for s in report.stages)
    assert report.final.format.value == "engine"
    validate = report.stages[-1].metrics
    check = next(c for c in validate["checks"] if c["metric"] == "accuracy")
    assert check["candidate"] >= check["reference"] - 0.03
    again = pipeline.run(recipe, emit=lambda _m: None)
    assert all(s.cached for s in again.stages)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(digits_teacher, tmp_path):
    out = tmp_path / "student"
    ckpt = tmp_path / ".edgesmith" / "scratch" / "student"  # the pipeline's scratch
    cmd = [str(EDGESMITH), *distill_args(digits_teacher, out, "--epochs", "150", "--patience", "0")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stderr=subprocess.DEVNULL)

    def epochs_done() -> int:
        found = latest_checkpoint(ckpt)
        return found[0] if found else 0

    deadline = time.monotonic() + 120
    while epochs_done() < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = epochs_done()
    assert not out.exists()  # the output is complete or absent
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after epoch" in r.stderr
    done = int(r.stderr.split("resuming after epoch ")[1].split("/")[0])
    assert done == killed_after and done < 150  # at most the interrupted epoch was lost
    trained = [line.split()[1] for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert trained[0] == f"{done + 1}/150" and len(trained) == 150 - done  # none redone
    history = json.loads((out / "manifest.json").read_text())["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, 151))
    assert not ckpt.exists()


def test_a_factory_teacher_without_spec_takes_input_declarations(cli, tmp_path):
    """A teacher factory with no EDGESMITH_SPEC: the error names --input, which distill (and
    every command that takes a factory) accepts; the student's artifact records them, so it
    exports with no flags."""
    import torch
    from safetensors.torch import save_file

    from tests.distill.factories import spec_less_teacher

    torch.manual_seed(0)
    save_file(spec_less_teacher().state_dict(), str(tmp_path / "t.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((64, 12)).astype(np.float32))
    args = ["distill", "--teacher", "tests.distill.factories:spec_less_teacher", "--weights",
            tmp_path / "t.safetensors", "--student", "tests.distill.factories:spec_less_student",
            "--data", tmp_path / "d.npz", "--epochs", "2"]  # fmt: skip
    r = cli(*args, "-o", tmp_path / "a")
    assert r.code == 2 and "--input" in r.stderr and not (tmp_path / "a").exists()
    r = cli(*args, "--input", "x:1x12", "--dynamic", "x:0", "-o", tmp_path / "s")
    assert r.code == 0, r.stderr
    info = json.loads((tmp_path / "s" / "manifest.json").read_text())["artifact"]["info"]
    assert info["inputs"] == ["x:1x12:float32"] and info["dynamic"] == ["x:0"]
    r = cli("export", tmp_path / "s", "-o", tmp_path / "onnx")
    assert r.code == 0, r.stderr
    r = cli("prune", "tests.distill.factories:spec_less_teacher", "--weights",
            tmp_path / "t.safetensors", "--input", "x:1x12", "--dynamic", "x:0", "--data",
            tmp_path / "d.npz", "--sparsity", "0.5", "--epochs", "0", "--latency-batches", "1",
            "--latency-rounds", "2", "-o", tmp_path / "p", "--print-recipe")  # fmt: skip
    assert r.code == 0 and 'inputs = ["x:1x12"]' in r.stdout, r.stdout
