"""The command line's grammar: --debug anywhere, third-party warnings hidden without it, the
options grouped and documented, and the generated reference (every command's options, their
types, defaults and help) kept equal to what the code says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_debug_is_taken_after_the_command_too(cli, tmp_path):
    quiet = cli("export", str(tmp_path / "missing"), "-o", tmp_path / "out")
    loud = cli("export", str(tmp_path / "missing"), "-o", tmp_path / "out", "--debug")
    assert quiet.code == loud.code == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert "model not found" in loud.stderr.splitlines()[-1]


def test_third_party_warnings_are_hidden_unless_debug(tmp_path):
    """A warning raised while a command runs (as torch's FutureWarnings are) is printed with
    --debug only."""
    code = (
        "import functools, sys, warnings\n"
        "from edgesmith.toolchain.cli import targets\n"
        "real = targets.command\n"
        "@functools.wraps(real)\n"
        "def noisy(*a, **k):\n"
        "    warnings.warn('from a dependency', FutureWarning)\n"
        "    return real(*a, **k)\n"
        "targets.command = noisy\n"
        "from edgesmith.toolchain.cli.app import make_app\n"
        "make_app()(args=sys.argv[1:], prog_name='edgesmith')\n"
    )
    for flags, shown in (([], False), (["--debug"], True)):
        r = subprocess.run([sys.executable, "-c", code, "targets", *flags], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert ("from a dependency" in r.stderr) is shown, r.stderr


def test_prune_help_groups_its_options_and_documents_each():
    from typer.testing import CliRunner

    from edgesmith.toolchain.cli.app import make_app

    r = CliRunner().invoke(make_app(), ["prune", "--help"], env={"COLUMNS": "140"})
    assert r.exit_code == 0
    out = r.stdout
    assert "Method" in out and "Training" in out
    assert out.index("Method") < out.index("Training")
    assert "--dropout" in out and "the student's dropout" in out
    assert "<structured|magnitude|movement|2:4>" in out  # the parser enforces the choices


def test_the_cli_and_recipe_references_are_current():
    """docs/reference/*.md are generated from the typer app and the pydantic models; an
    option or field changed without regenerating them fails here."""
    r = subprocess.run([sys.executable, "tools/docs_reference.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_command_shows_an_example_that_its_parser_takes():
    """Each command's --help ends with an example and the exit codes; every option the
    example uses is one the command has."""
    import shlex

    import typer

    from edgesmith.toolchain.cli.app import TOOL_EXAMPLES, make_app
    from edgesmith.toolchain.core.stage import stages

    group = typer.main.get_command(make_app())
    ctx = group.make_context("edgesmith", [], resilient_parsing=True)
    examples = {**{k: s.example for k, s in stages().items()}, **TOOL_EXAMPLES}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert "Exit codes: 0 ok, 1" in (cmd.epilog or ""), name
        words = shlex.split(examples[name])
        assert words[:2] == ["edgesmith", name] and f"Example: {examples[name]}" in cmd.epilog
        flags = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *p.secondary_opts)}
        unknown = [w for w in words if w.startswith("-") and w not in flags]
        assert not unknown, (name, unknown)


def test_a_list_is_written_with_commas_or_repeated(cli, tmp_path):
    """As bench --batch and quantize --latency-batches take them: `2,4` or the flag twice."""
    base = ("prune", "m", "-o", tmp_path / "p", "--data", "d.npz", "--sparsity", "0.5")
    commas = cli(*base, "--latency-batches", "2,4", "--print-recipe")
    twice = cli(*base, "--latency-batches", "2", "--latency-batches", "4", "--print-recipe")
    assert commas.code == twice.code == 0, commas.stderr
    assert "latency_batches = [2, 4]" in commas.stdout and commas.stdout == twice.stdout
    bad = cli(*base, "--latency-batches", "2,x", "--print-recipe")
    assert bad.code == 2 and "--latency-batches" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "m", "-o", "o", "--bogus"], "export: no such option: --bogus"),
        (["prune", "m", "-o", "o", "--method", "foo"], "prune: invalid value for '--method'"),
        (["validate", "c", "--limit", "x"], "validate: invalid value for '--limit'"),
        (["export", "m"], "export: missing option '--out'"),
        (["frobnicate"], "no such command 'frobnicate'"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(cli, args, message):
    """Like every other bad input: one line naming what is wrong, no box, no usage block."""
    r = cli(*args)
    assert r.code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgesmith: error: ") and message in lines[0]
    assert "--help'" in lines[0]


def test_one_name_per_concept_across_the_stages():
    """The sample cap is `limit` (and `eval_limit` for the eval data), the eval data
    `eval_data`, the output `out`, on every stage that has them; the old quantize names are
    still read."""
    from edgesmith.toolchain.core.stage import stages
    from edgesmith.toolchain.quantize.stage import QuantizeStage

    for kind, stage in stages().items():
        fields = set(stage.config.model_fields)
        assert not fields & {"samples", "eval", "max_samples", "n_samples"}, kind
        assert "out" in fields, kind
    old = QuantizeStage.model_validate({"calibration": "c.npz", "samples": 64, "eval": "e.npz"})
    assert old.limit == 64 and old.eval_data == "e.npz"
