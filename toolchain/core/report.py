"""A stage's report.json: a typed record (a dataclass per stage) that the stage builds from
the typed results of its steps, written once when the stage is done. No step writes into a
report it was handed; a step returns what it found and the stage puts it in its place."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

REPORT = "report.json"


def report_json(record: Any) -> dict[str, Any]:
    """The record as report.json holds it: its fields in order, nested records as objects,
    top-level fields left None (a step that did not run) out."""
    if not is_dataclass(record):
        raise TypeError(f"{type(record).__name__} is not a report record")
    out = asdict(record)
    return {f.name: out[f.name] for f in fields(record) if out[f.name] is not None}


def write_report(out: Path, record: Any) -> dict[str, Any]:
    """Write report.json into `out`; returns what was written."""
    from edgesmith.toolchain.core.files import write_json

    data = report_json(record)
    write_json(out / REPORT, data)
    return data
