"""Real English sentences with no download: the docstrings of Python's standard library.

Text encoders are distilled and calibrated on unlabelled sentences; this gives tests and
benchmarks a corpus on any machine. Docstrings are read with `ast` from the library's source
files, so no module is imported (importing all of the stdlib runs code: antigravity opens a
browser).
Sentences are split into training and held-out sets by module, so the held-out ones come
from modules never trained on, not just from other lines of the same docstring.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
from collections.abc import Iterable
from pathlib import Path

MIN_WORDS, MAX_WORDS = 6, 40
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Docstring lines that are code, doctest, tables or reST directives rather than prose.
NOT_PROSE = re.compile(r">>>|\.\.\.|::|==|->|\{|\}|\[|\]|\$|#|\\|`|\|")


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []  # a few stdlib files are test fixtures with deliberate syntax errors
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    return [d for n in nodes if (d := ast.get_docstring(n))]


def _sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        for s in SENTENCE_END.split(text):
            words = s.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS or NOT_PROSE.search(s):
                continue
            letters = sum(c.isalpha() or c.isspace() for c in s)
            if s[0].isupper() and s[-1] in ".!?" and letters >= 0.9 * len(s):
                out.append(s)
    return out


@functools.lru_cache(maxsize=2)  # parsing the whole library takes seconds; callers only read
def stdlib_sentences(root: Path | None = None) -> dict[str, list[str]]:
    """Module name → its docstring sentences, for every .py file of the standard library."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel.parts:
            continue
        found = [s for d in _docstrings(path) for s in _sentences(d)]
        if found:
            out[".".join(rel.with_suffix("").parts)] = found
    return out


def split_sentences(
    held_out: float = 0.2, seed: int = 0, root: Path | None = None
) -> tuple[list[str], list[str]]:
    """(training, held-out) sentences: disjoint modules, no sentence in both, deterministic."""
    train: list[str] = []
    test: list[str] = []
    seen: set[str] = set()
    for module, sentences in stdlib_sentences(root).items():
        h = int(hashlib.sha256(f"{seed}:{module}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        bucket = test if h < held_out else train
        for s in sentences:
            if s not in seen:
                seen.add(s)
                bucket.append(s)
    return train, test


def library_sentences(exclude: Iterable[str] = ()) -> list[str]:
    """Docstring sentences of the installed packages (site-packages: torch, transformers,
    scipy, ... about 80k here), none of them in `exclude`, deduplicated, in a fixed order.

    More training text for distillation; pass the held-out sentences as `exclude` (vendored
    copies of stdlib modules would otherwise leak them)."""
    skip = set(exclude)
    found = stdlib_sentences(Path(sysconfig.get_paths()["purelib"]))
    return [s for s in dict.fromkeys(s for v in found.values() for s in v) if s not in skip]


def write_sentences(
    out: Path, held_out: float = 0.2, seed: int = 0, libraries: bool = False
) -> tuple[Path, Path]:
    """train.txt and test.txt (one sentence a line) in `out`; returns their paths.

    `libraries`: the training set also gets the installed packages' sentences."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_sentences(held_out, seed)
    if libraries:
        train = list(dict.fromkeys(train + library_sentences(exclude=test)))
    paths = out / "train.txt", out / "test.txt"
    for p, lines in zip(paths, (train, test), strict=True):
        p.write_text("\n".join(lines) + "\n")
    return paths
