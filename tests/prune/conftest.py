"""A tiny fine-tuned BERT classifier (built and trained in code) with jsonl splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

KEYWORDS = ("file", "return", "object")  # label = the first keyword a sentence has; else 3


def label_of(sentence: str) -> int:
    s = sentence.lower()
    return next((i for i, k in enumerate(KEYWORDS) if k in s), len(KEYWORDS))


def _write(path: Path, sentences: list[str], labels: bool = True) -> None:
    with path.open("w") as f:
        for s in sentences:
            rec = {"text": s, "label": label_of(s)} if labels else {"text": s}
            f.write(json.dumps(rec) + "\n")


def _fine_tune(folder: Path, train: list[str], epochs: int = 6) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = BertForSequenceClassification.from_pretrained(str(folder))
    enc = tok(train, truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    y = torch.tensor([label_of(s) for s in train])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            loss = model(**{k: v[idx] for k, v in enc.items()}, labels=y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, minilm) -> dict[str, Path]:
    """model/ (a fine-tuned 2-layer BERT with 4 heads, MiniLM's tokenizer), train/eval jsonl."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgesmith.calibration.sentences import split_sentences

    d = tmp_path_factory.mktemp("tiny_classifier")
    folder = d / "model"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128, num_labels=len(KEYWORDS) + 1,
        )  # fmt: skip
        BertForSequenceClassification(cfg).save_pretrained(str(folder), safe_serialization=True)
        for f in (
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ):
            shutil.copy(minilm / f, folder / f)
        train, held = split_sentences()
        rng = np.random.default_rng(0)
        train = [train[i] for i in sorted(rng.permutation(len(train))[:512])]
        _fine_tune(folder, train)
    _write(d / "train.jsonl", train)
    _write(d / "eval.jsonl", held[:192])
    _write(d / "train_unlabelled.jsonl", train, labels=False)
    _write(d / "eval_unlabelled.jsonl", held[:192], labels=False)
    return {
        "model": folder,
        "train": d / "train.jsonl",
        "eval": d / "eval.jsonl",
        "train_unlabelled": d / "train_unlabelled.jsonl",
        "eval_unlabelled": d / "eval_unlabelled.jsonl",
        "dir": d,
    }
