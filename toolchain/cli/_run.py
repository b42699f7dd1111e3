"""Every command ends here: build a recipe, print it or run it, show the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.recipe import Recipe, describe_validation_error, recipe_from_dict


def one_stage(source: dict[str, Any], stage: dict[str, Any], name: str) -> Recipe:
    clean = {k: v for k, v in source.items() if v not in (None, [], ())}
    st = {k: v for k, v in stage.items() if v is not None}
    cfg = _stage_config(st, name)
    return recipe_from_dict({"name": name, "source": clean, "stages": [cfg]}, f"edgesmith {name}")


def _stage_config(stage: dict[str, Any], name: str) -> Any:
    """The stage's config from a command's options (validated once, here), refused with the
    option's name: --batch-size, not stages[0].batch_size."""
    from pydantic import ValidationError

    from edgesmith.toolchain.core.stage import stages

    known = stages().get(stage.get("kind"))
    if known is None:
        return stage  # the recipe's own check names what is available
    try:
        return known.config.model_validate(stage)
    except ValidationError as e:
        raise InvalidInput(
            describe_validation_error(f"edgesmith {name}", e, as_flags=True)
        ) from None


def execute(recipe: Recipe, print_recipe: bool) -> None:
    if print_recipe:
        typer.echo(recipe.to_toml(), nl=False)
        return
    from edgesmith.toolchain import pipeline

    report = pipeline.run(recipe)
    if pipeline.distributed_rank()[0] == 0:  # torchrun's other processes print nothing
        render(report)


def render(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="stages", show_lines=False)
    for col in ("#", "stage", "output", "cached", "seconds"):
        table.add_column(col)
    for i, s in enumerate(report.stages):
        table.add_row(str(i), s.kind, str(s.out), "yes" if s.cached else "no", f"{s.seconds:.1f}")
    console.print(table)
    for s in report.stages:
        if s.kind == "validate":
            console.print(validation_table(s.metrics))
            console.print(cost_table(s.metrics))
            console.print(f"report: {s.out / 'report.json'}  (junit.xml, summary.md beside it)")
        elif s.kind == "bench":
            console.print(bench_table(s.metrics))
    console.print(f"result: {report.final.path}")


def validation_table(r: dict[str, Any]):
    from rich.table import Table

    t = Table(
        title=f"validation: {'PASS' if r['passed'] else 'FAIL'} ({r['data']['samples']} samples)"
    )
    for col in ("metric", "output", "reference", "candidate", "drop", "budget", "result"):
        t.add_column(col, justify="right" if col not in ("metric", "output", "result") else "left")
    for c in r["checks"]:
        pct = c["metric"] in ("accuracy", "agreement")
        fmt = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.6g}")
        t.add_row(
            c["metric"],
            c["output"],
            fmt(c["reference"]),
            fmt(c["candidate"]),
            f"{100 * c['drop']:.2f} pt" if pct else f"{c['drop']:.3g}",
            "-"
            if c["budget"] is None
            else (f"{100 * c['budget']:.2f} pt" if pct else str(c["budget"])),
            {True: "pass", False: "FAIL", None: ""}[c["passed"]],
        )
    return t


def cost_table(r: dict[str, Any]):
    from rich.table import Table

    t = Table(title="cost")
    for col in ("model", "format", "latency p50, batch 1", "size"):
        t.add_column(col, justify="left" if col in ("model", "format") else "right")
    for who in ("reference", "candidate"):
        m = r[who]
        t.add_row(
            who, m["format"], f"{m['latency_ms']['p50']:.3f} ms", f"{m['size_bytes'] / 1e6:.3f} MB"
        )
    return t


def bench_table(r: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"bench: {r['target']}, {r['threads']} threads")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "per second"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        t.add_row(
            str(row["batch"]),
            f"{row['p50']:.3f}",
            f"{row['p90']:.3f}",
            f"{row['p99']:.3f}",
            f"{row['throughput_per_s']:.1f}",
        )
    return t


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def path_str(p: Path | None) -> str | None:
    return None if p is None else str(p)
