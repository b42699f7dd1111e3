from __future__ import annotations

from edgesmith.calibration.sentences import split_sentences


def test_stdlib_sentences_are_prose_and_the_splits_are_disjoint():
    train, test = split_sentences(held_out=0.2, seed=0)
    assert len(train) > 2000 and len(test) > 300
    assert not set(train) & set(test)
    for s in train[:200] + test[:200]:
        assert s[0].isupper() and s[-1] in ".!?" and ">>>" not in s
    assert split_sentences(held_out=0.2, seed=0) == (train, test)  # deterministic


def test_library_sentences_leave_out_the_held_out_ones(tmp_path, monkeypatch):
    import sysconfig

    from edgesmith.calibration.sentences import library_sentences

    pkg = tmp_path / "somepkg"
    pkg.mkdir()
    (pkg / "core.py").write_text(
        'def f():\n    """Return the sum of the two numbers given here.\n\n'
        '    Compute the value that the caller asked for today."""\n'
        'def g():\n    """Return the sum of the two numbers given here."""\n'
    )
    paths = {**sysconfig.get_paths(), "purelib": str(tmp_path)}
    monkeypatch.setattr(sysconfig, "get_paths", lambda: paths)
    held_out = "Compute the value that the caller asked for today."
    assert library_sentences() == ["Return the sum of the two numbers given here.", held_out]
    assert library_sentences(exclude=[held_out]) == [
        "Return the sum of the two numbers given here."
    ]
