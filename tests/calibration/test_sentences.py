from __future__ import annotations

from calibration.sentences import split_sentences


def test_stdlib_sentences_are_prose_and_the_splits_are_disjoint():
    train, test = split_sentences(held_out=0.2, seed=0)
    assert len(train) > 2000 and len(test) > 300
    assert not set(train) & set(test)
    for s in train[:200] + test[:200]:
        assert s[0].isupper() and s[-1] in ".!?" and ">>>" not in s
    assert split_sentences(held_out=0.2, seed=0) == (train, test)  # deterministic
