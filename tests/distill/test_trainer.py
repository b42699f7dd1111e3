"""The training loop on digits: the teacher's soft targets are what the student learns,
and an interrupted run resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.distill.stage import DistillStage
from edgesmith.toolchain.models.source import SourceSpec, resolve_source
from edgesmith.toolchain.training.checkpoints import latest_checkpoint
from edgesmith.toolchain.training.setup import prepare

STUDENT = "examples.digits_student:make_student"


def setup_for(teacher_dir: Path, **kw):
    """The loop's mechanics are tested at fixed settings (the defaults are tested below)."""
    spec = SourceSpec("examples.digits:make_model", str(teacher_dir / "model.safetensors"))
    for key, value in {"batch_size": 64, "lr": 3e-3, "patience": 0}.items():
        kw.setdefault(key, value)
    cfg = DistillStage(
        student=STUDENT,
        data=str(kw.pop("data", teacher_dir / "train.npz")),
        eval_data=str(kw.pop("eval_data", teacher_dir / "calib.npz")),
        **kw,
    )
    return prepare(resolve_source(spec), cfg, lambda _m: None)


def run(setup, checkpoints: Path, resume: bool = False, **kw):
    return setup.trainer(checkpoints, **kw).fit(resume)


def predict(student: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return student.eval()(x=torch.from_numpy(x))["logits"].argmax(1).numpy()


class RolledTeacher(nn.Module):
    """The digits teacher with its classes renamed: it says k + 1 where it sees k."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.outputs = teacher.outputs

    def forward(self, **feeds):
        return {"logits": torch.roll(self.teacher(**feeds)["logits"], 1, dims=1)}

    def prepare(self, feeds):
        return feeds

    def lengths(self, feeds):
        return None


def test_the_student_learns_the_teachers_soft_targets_not_the_labels(digits_teacher, tmp_path):
    """Unlabelled data and a teacher that renames every class: a student trained by the
    distillation loss must name them the teacher's way (fails if that loss is not used)."""
    for split in ("train", "calib"):
        with np.load(digits_teacher / f"{split}.npz") as z:
            np.savez(tmp_path / f"{split}.npz", x=z["x"])  # no labels: soft targets only
    setup = setup_for(
        digits_teacher,
        data=tmp_path / "train.npz",
        eval_data=tmp_path / "calib.npz",
        epochs=25,
    )
    setup.pair.teacher = RolledTeacher(setup.pair.teacher)
    assert setup.train_data.labels is None and setup.train_cfg.loss == "soft"
    result = run(setup, tmp_path / "ckpt")
    assert result.metric_name == "agreement"  # with the teacher's top-1: no labels to score
    with np.load(digits_teacher / "test.npz") as z:
        x, y = z["x"], z["labels"]
    pred = predict(setup.pair.student, x)
    teacher_says = (predict(setup.pair.teacher.teacher, x) + 1) % 10
    assert (pred == teacher_says).mean() >= 0.85
    assert (pred == y).mean() <= 0.2
    assert result.history[-1].loss < 0.5 * result.history[0].loss


def test_checkpoints_keep_the_best_epoch_and_the_student_ends_with_it(digits_teacher, tmp_path):
    setup = setup_for(digits_teacher, epochs=6)
    result = run(setup, tmp_path / "ckpt")
    assert [h.epoch for h in result.history] == [1, 2, 3, 4, 5, 6]
    best = max(result.history, key=lambda h: h.metric)
    assert result.best_epoch == best.epoch and result.best_metric == best.metric
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == sorted({f"epoch-{best.epoch:04d}", "epoch-0006"})
    with np.load(digits_teacher / "calib.npz") as z:
        acc = (predict(setup.pair.student, z["x"]) == z["labels"]).mean()
    assert acc == pytest.approx(result.best_metric)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(digits_teacher, tmp_path):
    straight = run(setup_for(digits_teacher, epochs=4), tmp_path / "straight")

    setup = setup_for(digits_teacher, epochs=4)
    calls = {"n": 0}
    original = setup.pair.student.prepare

    def dies_in_epoch_3(feeds):
        # 1 probe, then 17 training batches + 1 eval pass per epoch: call 45 is in epoch 3
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return original(feeds)

    setup.pair.student.prepare = dies_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "ckpt")
    assert latest_checkpoint(tmp_path / "ckpt")[0] == 2  # epoch 3 is lost, 1 and 2 are not

    with pytest.raises(InvalidInput, match="--resume"):
        run(setup_for(digits_teacher, epochs=4), tmp_path / "ckpt")
    with pytest.raises(InvalidInput, match="another teacher, student, data or settings"):
        run(setup_for(digits_teacher, epochs=4, lr=1e-2), tmp_path / "ckpt", resume=True)

    resumed = run(setup_for(digits_teacher, epochs=4), tmp_path / "ckpt", resume=True)
    assert resumed.resumed_after == 2
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.rank_digests == straight.rank_digests  # bit-identical final weights
    assert [h.metric for h in resumed.history] == [h.metric for h in straight.history]


def test_callbacks_see_steps_epochs_and_checkpoints_and_can_stop_the_run(digits_teacher, tmp_path):
    """What pruning hooks into: on_step after every optimizer step, on_checkpoint, and a stop
    from on_epoch_end; the process's global random state is what it was before."""
    from edgesmith.toolchain.training.trainer import Callback

    class Recorder(Callback):
        def __init__(self):
            self.steps, self.epochs, self.checkpoints = [], [], []

        def on_step(self, trainer, step):
            self.steps.append(step)

        def on_epoch_end(self, trainer, log):
            self.epochs.append(log.epoch)
            return log.epoch == 2  # stop after epoch 2

        def on_checkpoint(self, trainer, path):
            self.checkpoints.append(path.name)

    rec = Recorder()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    result = run(setup_for(digits_teacher, epochs=5), tmp_path / "ckpt", callbacks=[rec])
    assert torch.equal(torch.get_rng_state(), before)
    assert result.stopped_after == 2 and [h.epoch for h in result.history] == [1, 2]
    assert rec.epochs == [1, 2] and rec.checkpoints == ["epoch-0001", "epoch-0002"]
    per_epoch = len(rec.steps) // 2
    assert per_epoch > 0 and rec.steps == list(range(2 * per_epoch))  # global step numbers


def test_without_a_rate_the_range_test_chooses_one_and_puts_the_model_back(
    digits_teacher, tmp_path
):
    """No lr: Smith's range test runs on the run's start, its choice and reason are in the
    result, and the student starts training from the weights it had before the test; the
    callbacks' on_train_begin comes after both the probe and the test."""
    from edgesmith.toolchain.training import trainer as tr

    setup = setup_for(digits_teacher, epochs=1, lr=None)
    assert setup.train_cfg.find_lr
    start = {k: v.clone() for k, v in setup.pair.student.state_dict().items()}
    seen = {}

    class AtBegin(tr.Callback):
        def on_train_begin(self, trainer):
            seen["state"] = {k: v.clone() for k, v in trainer.student.state_dict().items()}
            seen["lr"] = trainer.progress.lr

    result = run(setup, tmp_path / "ckpt", callbacks=[AtBegin()])
    assert all(torch.equal(start[k], v) for k, v in seen["state"].items())
    lr = result.settings["lr"]
    assert lr == seen["lr"] and result.settings["lr_from"].startswith("range test")
    assert 3e-4 <= lr <= 3e-2  # within 10x of the usual rate for a factory student


def test_a_plateau_stops_the_run_after_patience_epochs(digits_teacher, tmp_path):
    """A run that cannot improve (a rate too small to move a weight) stops `patience` epochs
    after its last gain; the result says when."""
    result = run(setup_for(digits_teacher, epochs=10, lr=1e-12, patience=2), tmp_path / "c")
    assert result.stopped_after == 3 and len(result.history) == 3
    assert result.settings["patience"] == 2


def test_epochs_follow_the_data_size_and_the_amount_pruned():
    from edgesmith.toolchain.prune.stage import PruneStage
    from edgesmith.toolchain.training import defaults as d
    from edgesmith.toolchain.training.defaults import budget_scale, choose_epochs

    assert choose_epochs(7, 10_000, 32).count == 7  # given
    small, large = choose_epochs(None, 1_000, 32), choose_epochs(None, 64_000, 32)
    assert small.count == -(-d.AUTO_STEPS // 32) and "from the data size" in small.reason
    assert large.count == d.MIN_EPOCHS and choose_epochs(None, 10, 32).count == d.MAX_EPOCHS
    assert 1 == budget_scale(0) < budget_scale(0.5) < budget_scale(0.8) < budget_scale(0.95)
    at_90 = choose_epochs(None, 1_000, 32, PruneStage(data="d", method="magnitude",
                                                      sparsity=0.9).budget_scale())  # fmt: skip
    assert at_90.count > small.count


def test_the_range_test_picks_a_tenth_of_the_best_rate_or_says_it_cannot():
    from edgesmith.toolchain.training.defaults import pick_rate, range_rates

    rates = range_rates()
    falling = [2.3 - 2 * i / 100 if i < 70 else 50.0 for i in range(100)]  # diverges at 70
    lr, why = pick_rate(rates, falling, prior=1e-3)
    assert lr == pytest.approx(rates[69] / 10, rel=0.2) and "a tenth of it" in why
    lr, why = pick_rate(rates, [1.0] * 100, prior=1e-2)  # flat: the rate leaves no trace
    assert lr == 1e-2 and "did not fall" in why
    # a model that starts at its teacher's optimum (a dense start): any step makes it worse
    lr, why = pick_rate(rates, [0.01, 0.02, 0.05] + [1.0] * 97, prior=1e-3)
    assert lr == 1e-3 and "did not fall" in why
    lr, _ = pick_rate(rates, [5.0 - 4.9 * i / 99 for i in range(100)], prior=1e-5)
    assert lr == 1e-4  # held within 10x of the usual rate


def test_a_run_that_stopped_on_a_plateau_stays_stopped_when_resumed(digits_teacher, tmp_path):
    """Killed after early stopping but before its output was written, `--resume` trains no
    further epoch: the same weights as the run that stopped."""
    first = run(setup_for(digits_teacher, epochs=10, lr=1e-12, patience=2), tmp_path / "c")
    assert first.stopped_after == 3
    again = run(setup_for(digits_teacher, epochs=10, lr=1e-12, patience=2), tmp_path / "c",
                resume=True)  # fmt: skip
    assert again.resumed_after == 3 and len(again.history) == 3
    assert again.rank_digests == first.rank_digests
