from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.models.students import (
    default_layers,
    keep_layers,
    layer_stack,
    parameter_count,
    student_from_factory,
)


def tiny_bert(layers: int = 4):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
    )
    return BertModel(cfg).eval()


def test_default_layers_keep_first_and_last_evenly_spaced():
    assert default_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice from BERT-base
    assert default_layers(6, 3) == [0, 2, 5]
    assert default_layers(6, 6) == list(range(6))
    assert default_layers(6, 1) == [5]
    with pytest.raises(InvalidInput, match="between 1 and 6"):
        default_layers(6, 7)


def test_keep_layers_drops_the_others_and_keeps_the_teacher_weights():
    teacher, student = tiny_bert(), tiny_bert()
    kept = keep_layers(student, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert len(student.encoder.layer) == 2 and kept is student.encoder.layer
    for i, t in enumerate([0, 3]):
        for a, b in zip(kept[i].parameters(), teacher.encoder.layer[t].parameters(), strict=True):
            assert torch.equal(a, b)
    assert parameter_count(student) < parameter_count(teacher)
    ids = torch.randint(0, 64, (2, 7))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 7, 16)


def test_keep_layers_refuses_bad_indices():
    with pytest.raises(InvalidInput, match="increasing"):
        keep_layers(tiny_bert(), [3, 1])
    with pytest.raises(InvalidInput, match="increasing"):
        keep_layers(tiny_bert(), [0, 4])


def test_layer_stack_needs_exactly_one_stack():
    twin = nn.Module()
    twin.a = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
    twin.b = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
    with pytest.raises(InvalidInput, match="2 "):
        layer_stack(twin, 3)
    with pytest.raises(InvalidInput, match="found no stacks"):
        layer_stack(nn.Linear(2, 2), 3)


def test_student_factory_must_build_a_module():
    assert isinstance(student_from_factory("examples.digits_student:make_student"), nn.Module)
    with pytest.raises(InvalidInput, match="not a torch.nn.Module"):
        student_from_factory("tests.distill.factories:not_a_module")
    with pytest.raises(InvalidInput, match="cannot import"):
        student_from_factory("no_such_module:make")


def test_digits_student_is_at_most_a_tenth_of_the_teacher():
    from examples.digits import make_model
    from examples.digits_student import make_student

    assert parameter_count(make_student()) <= 0.10 * parameter_count(make_model())


def test_set_dropout_turns_off_every_dropout_of_a_bert():
    """nn.Dropout modules and the probability BERT's SDPA attention passes by itself."""
    import torch
    from transformers import BertConfig, BertModel

    from edgesmith.toolchain.models.students import set_dropout

    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5,
    )  # fmt: skip
    model = BertModel(cfg).train()
    x = torch.randint(0, 100, (2, 7))
    assert not torch.equal(model(x).last_hidden_state, model(x).last_hidden_state)
    assert set_dropout(model, 0.0) > 0
    assert torch.equal(model(x).last_hidden_state, model(x).last_hidden_state)
