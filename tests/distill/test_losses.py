from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgesmith.toolchain.training.losses import (
    embedding_loss,
    hidden_state_loss,
    logits_loss,
    soft_target_loss,
)


def test_soft_target_loss_is_zero_only_when_the_distributions_match():
    torch.manual_seed(0)
    t = torch.randn(8, 10)
    assert soft_target_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(torch.randn(8, 10), t, 4.0).item() > 0.01


def test_soft_targets_pull_the_student_to_the_teacher_distribution():
    torch.manual_seed(0)
    teacher = torch.randn(32, 10) * 3
    student = torch.zeros(32, 10, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.1)
    before = soft_target_loss(student, teacher, 2.0).item()
    for _ in range(300):
        opt.zero_grad()
        soft_target_loss(student, teacher, 2.0).backward()
        opt.step()
    after = soft_target_loss(student, teacher, 2.0).item()
    assert after < 0.01 * before
    assert torch.equal(student.argmax(1), teacher.argmax(1))
    # Not just the top-1: the whole tempered distribution (the "dark knowledge").
    p_s, p_t = F.softmax(student / 2.0, 1), F.softmax(teacher / 2.0, 1)
    assert torch.allclose(p_s, p_t, atol=0.02)


def test_alpha_mixes_soft_targets_and_labels():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    soft = soft_target_loss(s, t, 3.0)
    hard = F.cross_entropy(s, y)
    only_soft, parts = logits_loss(s, t, None, temperature=3.0, alpha=0.2)
    assert only_soft.item() == pytest.approx(soft.item()) and "hard" not in parts
    mixed, parts = logits_loss(s, t, y, temperature=3.0, alpha=0.25)
    assert mixed.item() == pytest.approx(0.25 * soft.item() + 0.75 * hard.item(), rel=1e-5)
    assert parts["hard"] == pytest.approx(hard.item(), rel=1e-5)


def test_embedding_loss_measures_direction_and_distance():
    torch.manual_seed(0)
    t = F.normalize(torch.randn(8, 32), dim=1)
    same, parts = embedding_loss(t.clone(), t)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    opposite, parts = embedding_loss(-t, t, mse_weight=0.0)
    assert parts["1-cos"] == pytest.approx(2.0, abs=1e-5) and opposite.item() == pytest.approx(2.0)
    scaled, parts = embedding_loss(2 * t, t, cos_weight=0.0)
    assert parts["1-cos"] == pytest.approx(0.0, abs=1e-6) and scaled.item() > 0


def test_hidden_state_loss_needs_matched_pairs():
    a = [torch.ones(2, 3, 4), torch.zeros(2, 3, 4)]
    assert hidden_state_loss(a, [torch.ones(2, 3, 4), torch.ones(2, 3, 4)]).item() == 0.5
    with pytest.raises(ValueError):
        hidden_state_loss(a, a[:1])
