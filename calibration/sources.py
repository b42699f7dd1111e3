"""Data for validation and calibration, checked against the model before anything runs.

Formats: .npz (arrays named by model input, optional `labels`), a folder of .npy files
(one per input, named `<input>.npy`, plus optional `labels.npy`), a text file of lines or
.jsonl records ({"text": ..., "label": ...}) tokenized with a model folder's tokenizer.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesmith.toolchain.core.artifact import IoSpec
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import require_file

LABELS = "labels"
TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Dataset:
    """Samples along the first axis of every array; `labels` is None when the data has none."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = ""  # the file the samples came from, for messages

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def batches(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        for start in range(0, len(self), size):
            sl = slice(start, start + size)
            yield (
                {k: v[sl] for k, v in self.feeds.items()},
                self.labels[sl] if self.labels is not None else None,
            )

    def take(self, n: int, seed: int | None = None) -> Dataset:
        """The first n samples, or n drawn without replacement with `seed`."""
        if n > len(self):
            raise InvalidInput(f"asked for {n} samples, the data has only {len(self)}")
        idx = (
            np.arange(n)
            if seed is None
            else np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        )
        return Dataset(
            {k: v[idx] for k, v in self.feeds.items()},
            self.labels[idx] if self.labels is not None else None,
            self.origin,
        )


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    path = require_file(Path(path), "data")
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise InvalidInput(f"{path}: folder holds no .npy files and no images")
        return {f.stem: _load_npy(f) for f in files}
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".npy":
        raise InvalidInput(f"{path}: a single .npy has no input name; use a folder of <input>.npy")
    raise InvalidInput(
        f"{path}: unsupported data format '{path.suffix}'; expected .npz, a folder of .npy, "
        f"or text ({', '.join(TEXT_SUFFIXES)}) with a tokenizer"
    )


# what a damaged archive or array file raises inside np.load and zipfile
_UNREADABLE = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)  # encrypted, unknown compression


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # np.load would take a .npy (or a pickle) behind a .npz name: only a zip archive is one
    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"{path}: not a .npz archive (no zip directory in the file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for k, v in arrays.items():  # numpy hands back a member without .npy magic as bytes
            if not isinstance(v, np.ndarray):
                raise ValueError(f"member '{k}' is not a .npy array")
        return arrays
    except _UNREADABLE as e:
        raise InvalidInput(
            f"{path}: not a readable .npz of plain arrays ({_first_line(e)})"
        ) from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except _UNREADABLE as e:
        raise InvalidInput(
            f"{path}: not a readable .npy of a plain array ({_first_line(e)})"
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_text(path: Path) -> tuple[list[str], np.ndarray | None]:
    path = require_file(Path(path), "data")
    if path.suffix == ".jsonl":
        texts, labels = [], []
        for i, line in enumerate(_utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                texts.append(str(rec["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidInput(
                    f"{path}:{i}: expected a JSON object with a 'text' field"
                ) from None
            labels.append(rec.get("label"))
        has = [lb is not None for lb in labels]
        if any(has) and not all(has):
            raise InvalidInput(f"{path}: 'label' is on some records but not all")
        return texts, (np.asarray(labels, dtype=np.int64) if all(has) and labels else None)
    return [t for t in _utf8(path).splitlines() if t.strip()], None


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None


def tokenize(
    texts: list[str], tokenizer_dir: Path, seq_len: int, names: list[str]
) -> dict[str, np.ndarray]:
    """Tokenize to fixed length `seq_len`; keeps only the inputs the model has."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise InvalidInput(
            f"{tokenizer_dir}: no usable tokenizer ({str(e).splitlines()[0]})"
        ) from None
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}


@dataclass(frozen=True)
class Preprocess:
    """How raw data becomes tensors: text through `tokenizer` (a folder with one), padded or
    cut to `seq_len`; an image folder by `image` (calibration/images.py ImagePreprocess keys)."""

    tokenizer: Path | None = None
    seq_len: int = 128
    image: dict | None = None


def load_dataset(
    path: Path, io: IoSpec, prep: Preprocess = Preprocess(), limit: int | None = None
) -> Dataset:
    """Load data (the first `limit` samples) for a model with inputs `io.inputs` and check it
    fits, before anything runs."""
    from edgesmith.calibration.images import ImagePreprocess, is_image_folder, load_image_folder

    path, tokenizer, seq_len, image = Path(path), prep.tokenizer, prep.seq_len, prep.image
    if is_image_folder(path):
        arrays, labels = load_image_folder(path, io, ImagePreprocess.from_dict(image or {}))
        if labels is not None:
            arrays[LABELS] = labels
        if limit:
            arrays = {k: v[:limit] for k, v in arrays.items()}
    elif path.suffix in TEXT_SUFFIXES:
        if tokenizer is None:
            raise InvalidInput(f"{path}: text data needs a tokenizer (a model folder with one)")
        texts, labels = read_text(path)
        if not texts:
            raise InvalidInput(f"{path}: no text lines")
        arrays = tokenize(
            texts[:limit] if limit else texts, Path(tokenizer), seq_len, io.input_names
        )
        if labels is not None:
            arrays[LABELS] = labels[:limit] if limit else labels
    else:
        arrays = load_arrays(path)
        if limit:
            arrays = {k: v[:limit] for k, v in arrays.items()}
    labels = arrays.pop(LABELS, None)
    check_fits(path, arrays, labels, io)
    data = Dataset({t.name: arrays[t.name] for t in io.inputs}, labels, str(path))
    check_finite(data)
    return data


def check_finite(data: Dataset) -> None:
    """NaN or Inf in float data is refused before anything runs (calibration ranges, metrics
    and the gate would all be computed on it)."""
    for name, a in data.feeds.items():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a).reshape(len(a), -1).all(axis=1))[0][0])
            raise InvalidInput(
                f"{data.origin or 'data'}: input '{name}' holds NaN or Inf (first at sample "
                f"{bad}); "
                "data must be finite"
            )


def check_fits(
    path: Path, arrays: dict[str, np.ndarray], labels: np.ndarray | None, io: IoSpec
) -> None:
    """Names, dtypes, ranks and fixed dims of the data against the model's inputs."""
    missing = [n for n in io.input_names if n not in arrays]
    if missing:
        raise InvalidInput(
            f"{path}: no array for model input(s) {missing}; the data has {sorted(arrays)} "
            f"(expected {', '.join(t.describe() for t in io.inputs)})"
        )
    extra = sorted(set(arrays) - set(io.input_names))
    if extra:
        raise InvalidInput(
            f"{path}: array(s) {extra} match no model input (inputs: {io.input_names})"
        )
    n = None
    for t in io.inputs:
        a = arrays[t.name]
        if a.dtype.name != t.dtype:
            raise InvalidInput(f"{path}: '{t.name}' is {a.dtype.name}, the model expects {t.dtype}")
        if a.ndim != t.rank:
            raise InvalidInput(
                f"{path}: '{t.name}' has rank {a.ndim} {tuple(a.shape)}, the model expects rank "
                f"{t.rank} ({t.describe()})"
            )
        for axis, (got, want) in enumerate(zip(a.shape, t.dims, strict=True)):
            if axis > 0 and isinstance(want, int) and got != want:
                raise InvalidInput(
                    f"{path}: '{t.name}' axis {axis} is {got}, the model expects {want} "
                    f"({t.describe()})"
                )
        if n is not None and len(a) != n:
            raise InvalidInput(f"{path}: '{t.name}' has {len(a)} samples, other inputs have {n}")
        n = len(a)
    if n == 0:
        raise InvalidInput(f"{path}: the data holds no samples")
    if labels is not None and (
        labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise InvalidInput(
            f"{path}: 'labels' must be {n} integers (one per sample), got {labels.dtype.name}"
            f"{tuple(labels.shape)}"
        )
    if labels is not None and labels.min() < 0:
        raise InvalidInput(f"{path}: 'labels' are class indices from 0, found {labels.min()}")
