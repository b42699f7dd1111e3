"""PyTorch sources: modules from a factory + safetensors, torch.export programs (.pt2).

Export goes through torch.onnx's dynamo exporter (torch.export underneath), the path the
PyTorch team maintains; the TorchScript exporter is deprecated.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesmith.toolchain.core.artifact import IoSpec, TensorSpec
from edgesmith.toolchain.core.errors import InvalidInput, caused_by
from edgesmith.toolchain.models.source import InputDecl, SourceSpec, import_factory, parse_inputs

SPEC_ATTR = "EDGESMITH_SPEC"  # a model family's spec, beside its factory (see examples/digits.py)
EXTERNAL_DATA_BYTES = 1_800_000_000
DYNAMIC_EXAMPLE = 2  # a dynamic axis traced at 1 would be specialised to 1 by torch.export


@dataclass
class TorchModel:
    """A module with its input declarations and output names, both fixed when it is loaded."""

    module: torch.nn.Module
    inputs: list[InputDecl]
    output_names: list[str]
    program: Any = None  # the torch.export program, when the source was a .pt2
    by_keyword: bool = False  # the inputs are passed as keyword arguments (forward's names)

    def call(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """The module on positional tensors (in input order), its outputs flattened."""
        if self.by_keyword:
            out = self.module(**{d.name: a for d, a in zip(self.inputs, args, strict=True)})
        else:
            out = self.module(*args)
        return [t for _, t in named_outputs(out)]

    def example(self, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        return example_feeds(self.inputs, batch=batch, seed=seed)


def example_feeds(
    inputs: list[InputDecl], batch: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded sample inputs: dynamic axes at DYNAMIC_EXAMPLE (or `batch` for axis 0)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for d in inputs:
        shape = [
            (batch or DYNAMIC_EXAMPLE)
            if (i == 0 and i in d.dynamic)
            else (DYNAMIC_EXAMPLE if i in d.dynamic else n)
            for i, n in enumerate(d.shape)
        ]
        if np.issubdtype(np.dtype(d.dtype), np.floating):
            feeds[d.name] = rng.standard_normal(shape).astype(d.dtype)
        else:
            feeds[d.name] = np.ones(shape, dtype=d.dtype)
    return feeds


def _family_spec(module: Any, factory: Any) -> dict[str, Any]:
    return getattr(factory, SPEC_ATTR, None) or getattr(module, SPEC_ATTR, None) or {}


def _decls_from_family(spec: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    inputs, dynamic = [], []
    for name, d in spec.get("inputs", {}).items():
        inputs.append(f"{name}:{'x'.join(str(n) for n in d['shape'])}:{d.get('dtype', 'float32')}")
        if d.get("dynamic"):
            dynamic.append(f"{name}:{','.join(str(a) for a in d['dynamic'])}")
    return tuple(inputs), tuple(dynamic)


def load_torch(spec: SourceSpec) -> TorchModel:
    """The module a torch source names, with its input declarations (flags win over the spec)."""
    if spec.model.endswith(".pt2"):
        return _load_program(spec)
    module, factory = import_factory(spec.model)
    family = _family_spec(module, factory)
    inputs, dynamic = spec.inputs, spec.dynamic
    if not inputs:
        inputs, fam_dyn = _decls_from_family(family)
        dynamic = dynamic or fam_dyn
    if not inputs:
        raise InvalidInput(
            f"factory '{spec.model}': input shapes unknown; pass --input NAME:DIMS "
            f"(e.g. --input x:1x3x224x224) or define {SPEC_ATTR} beside the factory"
        )
    try:
        # the global RNG is left alone; a factory without --weights is built from a fixed seed,
        # so that every stage that builds it gets the same module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = factory()
    except TypeError as e:
        raise InvalidInput(
            f"factory '{spec.model}' must be callable without arguments ({e})"
        ) from None
    if not isinstance(net, torch.nn.Module):
        raise InvalidInput(
            f"factory '{spec.model}' returned {type(net).__name__}, not a torch.nn.Module"
        )
    if spec.weights:
        _load_weights(net, Path(spec.weights), spec.model)
    decls = parse_inputs(inputs, dynamic)
    given = list(spec.outputs) or list(family.get("outputs", []))
    return named_model(net.eval(), decls, given, spec.model)


def _by_keyword(module: torch.nn.Module, decls: list[InputDecl]) -> bool:
    """Pass the inputs by name when forward has a parameter of each name (then their order on
    the command line does not matter); positionally otherwise (forward(*args), other names)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(d.name in params and params[d.name].kind in kinds for d in decls)


def named_model(
    module: torch.nn.Module, decls: list[InputDecl], given: list[str], ref: str, program: Any = None
) -> TorchModel:
    """The model with its output names fixed before anything is exported: the given names,
    else the names its output structure carries (dict keys, namedtuple and dataclass fields,
    `output` for one tensor, `output_0`... by position)."""
    # a program's module takes its inputs by position (its placeholders' names are not kwargs)
    keyword = program is None and _by_keyword(module, decls)
    model = TorchModel(module, decls, [], program=program, by_keyword=keyword)
    example = model.example()
    args = [torch.from_numpy(example[d.name]) for d in decls]
    try:
        with torch.inference_mode():
            out = (
                module(**dict(zip([d.name for d in decls], args, strict=True)))
                if (model.by_keyword)
                else module(*args)
            )
    except Exception as e:  # the user's forward on the declared inputs: any type
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(
            f"'{ref}' fails on inputs {[f'{d.name}:{d.shape}:{d.dtype}' for d in decls]} "
            f"({type(e).__name__}: {msg}); check --input"
        ) from None
    found = named_outputs(out)
    if not found:
        raise InvalidInput(f"'{ref}' returns no tensor (got {type(out).__name__})")
    if given and len(given) != len(found):
        raise InvalidInput(
            f"'{ref}' returns {len(found)} outputs ({', '.join(n for n, _ in found)}) but "
            f"{len(given)} output names were given ({', '.join(given)})"
        )
    names = list(given) or [n for n, _ in found]
    if len(set(names)) != len(names):
        raise InvalidInput(f"'{ref}': output names must be unique, got {names}")
    model.output_names = names
    return model


def _load_weights(net: torch.nn.Module, weights: Path, name: str) -> None:
    """Load `weights` into the factory's module, strictly; a file that channel pruning wrote
    says so in its metadata, and the modules it names are given the file's shapes first."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from edgesmith.toolchain.models.channels import read_record, rebuild_shapes

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata()
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise InvalidInput(f"{weights}: not a readable safetensors file ({e})") from None
    record = read_record(meta, weights)
    if record is not None:
        rebuild_shapes(net, state, record, weights)
    # load_state_dict would cast int32 into a float parameter silently: the dtypes must match
    own = net.state_dict()
    for key, t in state.items():
        if key in own and t.dtype != own[key].dtype:
            raise InvalidInput(
                f"{weights}: '{key}' is {str(t.dtype).removeprefix('torch.')}, '{name}' has "
                f"{str(own[key].dtype).removeprefix('torch.')} (convert the weights first)"
            )
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches: the weights are for another shape
        first = str(e).strip().splitlines()[-1].strip()
        raise InvalidInput(f"{weights}: does not match '{name}' ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        raise InvalidInput(
            f"{weights}: does not match '{name}' (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )


def _check_pt2(path: str) -> None:
    """A .pt2 is refused unless it is the zip archive torch.export.save writes (an
    `archive_format` record). Without one, torch.export.load falls back to its legacy reader and
    logs that reader's traceback; a crafted zip of pickles is refused here, before torch."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"{path}: not a torch.export program (not a zip archive)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        raise InvalidInput(
            f"{path}: not a torch.export program (no archive_format record: save it with "
            "torch.export.save)"
        )


def _load_program(spec: SourceSpec) -> TorchModel:
    _check_pt2(spec.model)
    try:
        program = torch.export.load(spec.model)
    except Exception as e:  # torch raises several types for a bad archive
        raise InvalidInput(
            f"{spec.model}: not a torch.export program ({type(e).__name__})"
        ) from None
    sig = program.graph_signature
    metas = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    decls = []
    for name in sig.user_inputs:
        val = metas[name]
        shape, dyn = [], []
        for i, s in enumerate(val.shape):
            if isinstance(s, torch.SymInt):
                dyn.append(i)
                shape.append(DYNAMIC_EXAMPLE)
            else:
                shape.append(int(s))
        decls.append(
            InputDecl(name, tuple(shape), str(val.dtype).removeprefix("torch."), tuple(dyn))
        )
    return named_model(program.module(), decls, list(spec.outputs), spec.model, program)


def named_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """A module's outputs as (name, tensor) in torch.export's order: a tensor is `output`;
    dicts (Hugging Face ModelOutput too) give their keys, namedtuples and dataclasses their
    fields, sequences their position; nested names join with '_'; None is skipped."""
    import dataclasses

    def join(key: Any) -> str:
        return f"{prefix}_{key}" if prefix else str(key)

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if out is None:
        return []
    if isinstance(out, dict):  # before dataclasses: a ModelOutput is both, its keys skip None
        items = list(out.items())
    elif hasattr(out, "_fields"):
        items = list(zip(out._fields, out, strict=True))
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    elif isinstance(out, list | tuple):
        items = [(i if prefix else f"output_{i}", o) for i, o in enumerate(out)]
    else:
        raise InvalidInput(
            f"model output of type {type(out).__name__} is not a tensor, tuple, list, dict, "
            "namedtuple or dataclass of tensors"
        )
    return [pair for k, o in items for pair in named_outputs(o, join(k))]


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    return [t for _, t in named_outputs(out)]


def export_view(module: torch.nn.Module, input_names: list[str], call: Any) -> torch.nn.Module:
    """The module as torch.export should see it: forward(<input names>) -> a flat tuple.

    A shallow copy whose own `forward` calls `call(*args)`: it shares the module's parameters
    and submodules, so the ONNX initializers keep the module's own names (a wrapping module
    would prefix each of them), and the user's module is not changed.
    """
    import copy
    import inspect

    view = copy.copy(module)

    def forward(*args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs.update(zip(input_names, args, strict=False))
        return tuple(call(*(kwargs[n] for n in input_names)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in input_names])
    view.forward = forward
    return view


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set for a block and put back after (a process-wide setting:
    one stage's choice must not carry into the next)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRunner:
    """Runs a torch module eagerly on numpy feeds (the reference an export is checked against)."""

    def __init__(self, model: TorchModel, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        first = self._run(model.example())
        batch_dyn = any(0 in d.dynamic for d in model.inputs)
        self.io = IoSpec(
            tuple(
                TensorSpec(
                    d.name,
                    d.dtype,
                    tuple(
                        "batch"
                        if i in d.dynamic and i == 0
                        else (f"{d.name}_{i}" if i in d.dynamic else n)
                        for i, n in enumerate(d.shape)
                    ),
                )
                for d in model.inputs
            ),
            tuple(
                TensorSpec(
                    n,
                    str(t.dtype).removeprefix("torch."),
                    tuple("batch" if (i == 0 and batch_dyn) else s for i, s in enumerate(t.shape)),
                )
                for n, t in zip(model.output_names, first, strict=True)
            ),
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[d.name])) for d in self.model.inputs]
        with torch_threads(self.threads), torch.inference_mode():
            out = self.model.call(*args)
        return [t.detach().cpu().numpy() for t in out]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.model.output_names, self._run(feeds), strict=True))


@contextlib.contextmanager
def quiet(names: tuple[str, ...] = ("torch.onnx", "onnxscript", "torch.export")):
    """Exporters print progress lines to stdout, log at INFO and warn about their own
    internals (torch's pytree FutureWarning, its axis-renaming UserWarning); keep our output
    to our own lines for a block: stdout swallowed, the named loggers at ERROR, those
    warnings off."""
    import warnings

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def onnx_from_torch(model: TorchModel, out: Path, opset: int) -> Path:
    """Export to `out` (a .onnx path); weights over 2 GB go to external data beside it."""
    example = model.example()
    args = tuple(torch.from_numpy(example[d.name]) for d in model.inputs)
    names = [d.name for d in model.inputs]
    src = (
        model.program if model.program is not None else export_view(model.module, names, model.call)
    )
    shapes = None
    if model.program is None and any(d.dynamic for d in model.inputs):
        batch = torch.export.Dim("batch")  # one object: inputs share their batch axis
        shapes = {
            d.name: {i: batch if i == 0 else torch.export.Dim(f"{d.name}_{i}") for i in d.dynamic}
            or None
            for d in model.inputs
        }
    return export_onnx(ExportCall(src, args, names, list(model.output_names), shapes), out, opset)


@dataclass(frozen=True)
class ExportCall:
    """What the exporter is given: a module or a torch.export program, example arguments,
    the ONNX input and output names, and the dynamic shapes (None: every axis static)."""

    src: Any
    args: tuple
    inputs: list[str]
    outputs: list[str]
    shapes: Any = None


def export_onnx(call: ExportCall, out: Path, opset: int) -> Path:
    """torch.onnx's dynamo exporter on the call, its errors as one line; inline weights
    unless the protobuf 2 GB limit forces external data."""
    src = call.src
    module = src.module() if hasattr(src, "graph_signature") else src
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    kwargs: dict[str, Any] = {"external_data": params > EXTERNAL_DATA_BYTES}
    if call.shapes is not None:
        kwargs["dynamic_shapes"] = call.shapes
    try:
        with quiet():
            torch.onnx.export(
                src,
                call.args,
                str(out),
                dynamo=True,
                opset_version=opset,
                input_names=call.inputs,
                output_names=call.outputs,
                **kwargs,
            )
    except Exception as e:  # the exporter raises many types; surface one line
        cause = caused_by(e, (KeyboardInterrupt, OSError))  # Ctrl-C, a full disk: not the model
        if cause is not None:
            raise cause from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"torch.onnx export failed: {msg}") from e
    _after_export(out, external=kwargs["external_data"])
    return out


def _after_export(path: Path, external: bool) -> None:
    """The exported graph without the exporter's stack traces (core/onnx_model.py says why)
    and in the forms onnxruntime's fusions match (same outputs, same bits). A model with
    external data keeps its data file as written; only the graph file is rewritten."""
    import onnx

    from edgesmith.toolchain.core.onnx_model import gelu_as_onnxruntime_fuses, strip_stack_traces

    model = onnx.load(str(path), load_external_data=False)
    changed = strip_stack_traces(model)
    if not external:  # the rewrite reads weights; an external-data model keeps its graph
        changed += gelu_as_onnxruntime_fuses(model)
    if changed:
        onnx.save(model, str(path))
