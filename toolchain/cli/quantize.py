from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute, one_stage, path_str
from edgesmith.toolchain.cli.build import parse_options
from edgesmith.toolchain.cli.options import (
    GateOutput,
    MaxDrop,
    Metric,
    Out,
    PrintRecipe,
    Target,
    Threads,
    int_list,
    parse_budget,
)
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.quantize.stage import QuantizeStage

D = QuantizeStage.default
# the config's Literal: the parser enforces and lists the choices
METHODS = QuantizeStage.model_fields["method"].annotation


# The command's options (module-level so that its signature stays short).
_Model = Annotated[
    Path, typer.Argument(help="The fp32 ONNX model (or a directory an export wrote).")
]
_Calibration = Annotated[
    Path | None,
    typer.Option(
        help="Calibration data: .npz, a folder of .npy or images, or text lines (+ tokenizer).",
        rich_help_panel="Data",
    ),
]
_Method = Annotated[
    METHODS | None,  # the parser enforces the choices
    typer.Option(
        help=f"How ranges are set; dynamic: per call, no calibration (default {D('method')}).",
        rich_help_panel="Method",
    ),
]
_Limit = Annotated[
    int | None,
    typer.Option(
        "--limit", "--samples",
        help="Use N calibration samples, drawn with --seed (default: all).",
        rich_help_panel="Data",
    ),
]  # fmt: skip
_Seed = Annotated[
    int | None,
    typer.Option(
        help=f"Seed of the calibration draw (default {D('seed')}).", rich_help_panel="Data"
    ),
]
_Percentile = Annotated[
    float | None,
    typer.Option(
        help=f"Percentile of |x| kept by --method percentile (default {D('percentile')}).",
        rich_help_panel="Method",
    ),
]
_Preset = Annotated[
    str | None,
    typer.Option(
        help="Preset name (default: the target's; for ort-cpu, by this CPU's instruction set).",
        rich_help_panel="Method",
    ),
]
_OpTypes = Annotated[
    list[str] | None,
    typer.Option(
        "--op-types",
        help="Op type to quantize (repeatable; replaces the preset's).",
        rich_help_panel="Method",
    ),
]
_Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Node-name pattern kept in float (fnmatch, repeatable).",
        rich_help_panel="Method",
    ),
]
_OutlierRatio = Annotated[
    float | None,
    typer.Option(
        help="Input channels above this × the median channel's max run in float "
        "(0: off; default: the preset's).",
        rich_help_panel="Method",
    ),
]
_SmoothAlpha = Annotated[
    float | None,
    typer.Option(
        help="SmoothQuant strength: move this much of the activation channels' range into "
        "the weights (0: off; default: the preset's).",
        rich_help_panel="Method",
    ),
]
_Tokenizer = Annotated[
    Path | None,
    typer.Option(
        help="Tokenizer folder for text data (default: the model's folder).", rich_help_panel="Data"
    ),
]
_SeqLen = Annotated[
    int | None,
    typer.Option(
        help=f"Token sequence length for text data (default {D('seq_len')}).",
        rich_help_panel="Data",
    ),
]
_Image = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        help="Image-folder preprocessing KEY=VALUE (size, scale, mean, std, layout, "
        "resample; lists comma-separated).",
        rich_help_panel="Data",
    ),
]
_Eval = Annotated[
    Path | None,
    typer.Option(
        "--eval-data",
        "--eval",
        help="Eval data for the accuracy gate and the fallback loop.",
        rich_help_panel="Accuracy gate",
    ),
]
_GatherInt8 = Annotated[
    bool | None,
    typer.Option(
        "--gather-int8/--no-gather-int8",
        help="Embedding tables as int8 rows with a scale per row (default: the preset's).",
        rich_help_panel="Method",
    ),
]
_LatencyBatches = Annotated[
    str | None,
    typer.Option(
        help="Batch sizes at which the int8 engine must not be slower than fp32 here; "
        "nodes go back to float until it is (default 1,8 for ort-cpu; 'off': no check).",
        rich_help_panel="Latency",
    ),
]
_LatencySeq = Annotated[
    str | None,
    typer.Option(
        help="Text: the sequence lengths the check times, comma-separated (default: the data's "
        "median length and its padded length).",
        rich_help_panel="Latency",
    ),
]
_EvalLimit = Annotated[
    int | None,
    typer.Option(help="Use only the first N eval samples.", rich_help_panel="Accuracy gate"),
]
_MaxFallback = Annotated[
    int | None,
    typer.Option(help="Put at most N nodes back to float.", rich_help_panel="Accuracy gate"),
]
_CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="Calibration cache (default: .edgesmith/cache/quantize beside -o).",
        rich_help_panel="Output",
    ),
]


def command(
    model: _Model,
    out: Out,
    calibration: _Calibration = None,
    method: _Method = None,
    limit: _Limit = None,
    seed: _Seed = None,
    percentile: _Percentile = None,
    target: Target = None,
    preset: _Preset = None,
    op_types: _OpTypes = None,
    exclude: _Exclude = None,
    outlier_ratio: _OutlierRatio = None,
    smooth_alpha: _SmoothAlpha = None,
    tokenizer: _Tokenizer = None,
    seq_len: _SeqLen = None,
    image: _Image = None,
    eval: _Eval = None,
    metric: Metric = None,
    max_drop: MaxDrop = None,
    output: GateOutput = None,
    eval_limit: _EvalLimit = None,
    max_fallback: _MaxFallback = None,
    threads: Threads = None,
    cache_dir: _CacheDir = None,
    gather_int8: _GatherInt8 = None,
    latency_batches: _LatencyBatches = None,
    latency_seq: _LatencySeq = None,
    print_recipe: PrintRecipe = False,
) -> None:
    """Quantize to int8 (QDQ) with calibrated ranges.

    With --eval-data, nodes go back to float until the gate passes (exit 1 if none does).
    """
    recipe = one_stage(
        {"model": str(model)},
        {
            "kind": "quantize",
            "out": str(out),
            "method": method,
            "calibration": path_str(calibration),
            "limit": limit,
            "seed": seed,
            "percentile": percentile,
            "target": target,
            "preset": preset,
            "op_types": op_types or [],
            "exclude": exclude or [],
            "outlier_ratio": outlier_ratio,
            "smooth_alpha": smooth_alpha,
            "tokenizer": path_str(tokenizer),
            "seq_len": seq_len,
            "image": _image_options(image or []),
            "eval_data": path_str(eval),
            "metrics": metric or [],
            "max_drop": parse_budget(max_drop),
            "output": output,
            "eval_limit": eval_limit,
            "max_fallback": max_fallback,
            "threads": threads,
            "cache_dir": path_str(cache_dir),
            "gather_int8": gather_int8,
            "latency_batches": _batches(latency_batches),
            "latency_seqs": int_list("--latency-seq", latency_seq),
        },
        "quantize",
    )
    execute(recipe, print_recipe)


def _batches(text: str | None) -> list[int] | None:
    """'1,8' → [1, 8]; 'off' → [] (no latency check); None → the stage's default."""
    if text is None:
        return None
    if text.strip().lower() in ("off", "none", ""):
        return []
    try:
        out = [int(b) for b in text.split(",")]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise InvalidInput(f"--latency-batches '{text}': batch sizes like 1,8, or off")
    return out


def _image_options(items: list[str]) -> dict:
    """--image size=224,224 --image mean=0.485,0.456,0.406 → {"size": [224, 224], ...}."""
    out = {}
    for key, value in parse_options(items).items():
        if isinstance(value, str) and "," in value:
            value = [float(v) if "." in v else int(v) for v in value.split(",")]
        out[key] = value
    return out
