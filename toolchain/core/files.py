"""Atomic outputs and content hashes.

Every output directory is complete or absent: it is written in a temporary sibling
and renamed into place only when the stage finished, so a failure or Ctrl-C leaves nothing
half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgesmith.toolchain.core.errors import InvalidInput

CHUNK_BYTES = 1 << 20
# sha256 by file identity: a stage hashes its input for the cache key, its output for the
# artifact and again for the manifest; a 90 MB model is hashed once per process. A rewrite
# changes the mtime (and an atomic replace the inode), a rename changes neither.
_DIGESTS: dict[tuple[int, ...], str] = {}


def sha256_file(path: Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def sha256_path(path: Path, exclude: Iterable[str] = ("manifest.json",)) -> str:
    """Content hash of a file, or of a directory's files (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for name, digest in sorted(file_hashes(path, exclude).items()):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def file_hashes(directory: Path, exclude: Iterable[str] = ("manifest.json",)) -> dict[str, str]:
    """sha256 of every file below `directory`, keyed by its path relative to it."""
    skip = set(exclude)
    out = {}
    for p in sorted(Path(directory).rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in skip and "__pycache__" not in p.parts:
            out[rel] = sha256_file(p)
    return out


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def require_file(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{what} not found: {path}")
    return path


# A stage writes a directory (the model, its sidecar files, manifest.json); an output named like
# a model file would be a directory called model.onnx, which make rules and users then misread.
FILE_SUFFIXES = (".onnx", ".ort", ".pt2", ".pt", ".pth", ".bin", ".safetensors", ".engine",
                 ".plan", ".trt", ".npz", ".json")  # fmt: skip


def check_output_not_input(out: Path, *inputs: Path | None) -> None:
    """Refuse an output path that is, contains or lies inside one of the inputs, or that is
    named like a file (every output is a directory)."""
    if Path(out).suffix.lower() in FILE_SUFFIXES:
        raise InvalidInput(
            f"output {out}: edgesmith writes a directory (the model, its files and "
            f"manifest.json), not a {Path(out).suffix} file; name a directory, e.g. -o "
            f"{Path(out).with_suffix('')}"
        )
    o = Path(out).resolve()
    for i in inputs:
        if i is None:
            continue
        r = Path(i).resolve()
        if o == r or r.is_relative_to(o) or (r.is_dir() and o.is_relative_to(r)):
            raise InvalidInput(f"output {out} would overwrite the input {i}; choose another -o")


@contextmanager
def dir_lock(directory: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """An exclusive flock on a directory itself (no lock file), for processes that share it:
    a recipe's stages, a shared timing cache. The kernel drops an flock when its process
    dies, so a killed run leaves no stale lock. `on_wait` runs once if another holds it."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and an
    existing `out` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the output should be a normal directory
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _recover(out: Path) -> None:
    """What a killed process (kill -9: no cleanup ran) left beside `out`: its temporary
    directory is removed, and an output it had moved aside to replace is put back if nothing
    replaced it. Only a process that is gone is cleaned up after (the pid is in the name)."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, rest = p.name[len(out.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(p, out)  # the complete output from before the killed replace
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# Files a deployment needs beside the model to turn raw input into tensors (Hugging Face names).
PREPROCESSING_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "preprocessor_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def carry_preprocessing(src_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer/config files beside the model into the engine: it ships complete."""
    carried = []
    for name in PREPROCESSING_FILES:
        src = src_dir / name
        # a link is not followed: it could name any file on the machine
        if src.is_file() and not src.is_symlink() and not (out / name).exists():
            shutil.copy2(src, out / name)
            carried.append(name)
    return carried
