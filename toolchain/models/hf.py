"""Hugging Face model folders: loaded with transformers (4.45 to 5.x), exported to ONNX.

Two exporters, checked against the loaded model the same way:
- `torch` (the default): torch.onnx's dynamo exporter on the model called with the task's
  inputs and returning the task's outputs (`HfSignature`). It works on transformers 4 and 5.
- `optimum`: optimum-onnx's exporter, where it is installed (it requires transformers < 4.58).

The signature is ours, not optimum's OnnxConfig: optimum-onnx does not run on transformers 5,
and a model's inputs and outputs follow from its task and its forward's parameters.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.toolchain.core.artifact import IoSpec, TensorSpec
from edgesmith.toolchain.core.errors import InvalidInput

# Each task: the transformers Auto class that loads it (AutoModelFor<name>; its architectures
# are transformers' MODEL_FOR_<NAME>_MAPPING_NAMES) and the outputs the model exports.
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "audio-classification": ("AudioClassification", ("logits",)),
    "automatic-speech-recognition": ("CTC", ("logits",)),
    "image-classification": ("ImageClassification", ("logits",)),
    "text-classification": ("SequenceClassification", ("logits",)),
    "token-classification": ("TokenClassification", ("logits",)),
    "question-answering": ("QuestionAnswering", ("start_logits", "end_logits")),
    "multiple-choice": ("MultipleChoice", ("logits",)),
    "fill-mask": ("MaskedLM", ("logits",)),
    "text-generation": ("CausalLM", ("logits",)),
    "feature-extraction": ("", ("last_hidden_state",)),
}
SENTENCE_OUTPUTS = ("token_embeddings", "sentence_embedding")  # a sentence-transformers folder
EXPORTERS = ("torch", "optimum")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INT_INPUTS = (*TEXT_INPUTS, "position_ids")
AUDIO_SAMPLES = 1600  # samples per "sequence" step of a raw-waveform example (0.1 s at 16 kHz)


def _config(path: Path) -> dict:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path}/config.json: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{path}/config.json: not a JSON object")
    return config


def infer_task(path: Path) -> str:
    """The task config.json's architecture belongs to, by transformers' own model tables."""
    import transformers.models.auto.modeling_auto as auto

    archs = _config(path).get("architectures") or []
    for arch in archs:
        for task, (head, _) in TASKS.items():
            table = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", head).upper()
            names = getattr(auto, f"MODEL_FOR_{table}_MAPPING_NAMES", {}) if head else {}
            if any(arch == v or (isinstance(v, tuple) and arch in v) for v in names.values()):
                return task
        if arch.endswith("Model"):
            return "feature-extraction"
    raise InvalidInput(
        f"{path}: cannot infer the task from config.json architectures {archs}; pass --task "
        f"(one of {', '.join(TASKS)})"
    )


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    from edgesmith.toolchain.models.torch import quiet

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers 5 draws one while it loads weights
    try:
        with quiet(("optimum", "sentence_transformers")):
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass
class HfSignature:
    """What the exported model takes and returns: input and output names with their dynamic
    axes ({axis: name}), and how to call the loaded model with them."""

    task: str
    library: str  # "transformers" or "sentence_transformers"
    inputs: dict[str, dict[int, str]]
    outputs: dict[str, dict[int, str]]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # fixed sizes by input
    extra: dict[str, Any] = field(default_factory=dict)  # keyword arguments of every call

    def call(self, model: Any, feeds: dict[str, Any]) -> dict[str, Any]:
        """The model on `feeds` (tensors by input name), its outputs by name."""
        if self.library == "sentence_transformers":
            out = model(dict(feeds))
        else:
            out = model(**feeds, **self.extra)
        missing = [n for n in self.outputs if n not in out or out[n] is None]
        if missing:
            raise InvalidInput(
                f"{type(model).__name__} returns no {missing} for task '{self.task}' "
                f"(it returns {[k for k in out if out[k] is not None]}); pass another --task"
            )
        return {n: out[n] for n in self.outputs}


@dataclass
class HfModel:
    path: Path
    task: str
    library: str
    model: Any
    signature: HfSignature

    def example(self, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded sample inputs: token ids in the vocabulary and full masks for text, normal
        noise for pixels and waveforms, at `batch` and, where dynamic, `seq` steps."""
        rng = np.random.default_rng(seed)
        config = _text_config(self.model)
        feeds = {}
        for name, axes in self.signature.inputs.items():
            shape = [
                batch if axes.get(i) == "batch" else (_steps(name, seq) if i in axes else n)
                for i, n in enumerate(self.signature.shapes[name])
            ]
            if name == "input_ids":
                vocab = int(getattr(config, "vocab_size", 100) or 100)
                feeds[name] = rng.integers(3, max(4, vocab), shape, dtype=np.int64)
            elif name == "attention_mask":
                feeds[name] = np.ones(shape, dtype=np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros(shape, dtype=np.int64)
            elif name == "position_ids":
                feeds[name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(np.int64)
            else:
                feeds[name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def _steps(name: str, seq: int) -> int:
    return seq * AUDIO_SAMPLES if name == "input_values" else seq


def _text_config(model: Any) -> Any:
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            config = m.config
            return getattr(config, "text_config", None) or config
    raise InvalidInput(f"{type(model).__name__} holds no transformers PreTrainedModel")


def _forward_params(model: Any) -> dict[str, inspect.Parameter]:
    from transformers import PreTrainedModel

    core = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    return dict(inspect.signature(core.forward).parameters)


def signature_of(model: Any, task: str, library: str) -> HfSignature:
    """The inputs the task feeds (those the model's forward takes), its outputs, their axes."""
    from transformers import PreTrainedModel

    core = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    config = _text_config(model)
    params = _forward_params(model)
    main = getattr(core, "main_input_name", "input_ids")
    inputs: dict[str, dict[int, str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if main == "input_ids":
        choice = task == "multiple-choice"
        axes = (
            {0: "batch", 1: "num_choices", 2: "sequence"} if choice else {0: "batch", 1: "sequence"}
        )
        for name in TEXT_INPUTS:
            # BERT-like families have segment embeddings; RoBERTa-like ones have one segment
            if name == "token_type_ids" and int(getattr(config, "type_vocab_size", 0) or 0) < 2:
                continue
            if name in params:
                inputs[name], shapes[name] = dict(axes), (2, 2, 16) if choice else (2, 16)
    elif main == "pixel_values":
        size = getattr(config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        inputs[main], shapes[main] = (
            {0: "batch"},
            (2, int(getattr(config, "num_channels", 3)), h, w),
        )
    elif main in ("input_values", "input_features") and hasattr(config, "num_mel_bins"):
        frames = int(getattr(config, "max_length", 0) or getattr(config, "max_source_positions", 0))
        mel = int(config.num_mel_bins)
        inputs[main], shapes[main] = {0: "batch"}, (2, frames, mel)  # spectrogram models (AST)
    elif main == "input_values":
        inputs[main], shapes[main] = {0: "batch", 1: "sequence"}, (2, 16 * AUDIO_SAMPLES)
    else:
        raise InvalidInput(
            f"{type(core).__name__}: inputs '{main}' are not supported (text, images and audio are)"
        )
    names = SENTENCE_OUTPUTS if library == "sentence_transformers" else TASKS[task][1]
    extra = {k: False for k in ("use_cache",) if k in params}
    extra.update({"return_dict": True} if "return_dict" in params else {})
    sig = HfSignature(task, library, inputs, {n: {} for n in names}, shapes, extra)
    sig.outputs = _output_axes(model, sig)
    return sig


def _output_axes(model: Any, sig: HfSignature) -> dict[str, dict[int, str]]:
    """Each output's dynamic axes, found by running two sizes: an axis that follows the batch
    is `batch`, one that follows the sequence is `sequence`."""
    import torch

    probe = HfModel(Path("."), sig.task, sig.library, model, sig)
    a = probe.example(batch=2, seq=16)
    b = probe.example(batch=3, seq=24)
    with torch.inference_mode(), _quiet():
        try:
            oa = sig.call(model, {k: torch.from_numpy(v) for k, v in a.items()})
            ob = sig.call(model, {k: torch.from_numpy(v) for k, v in b.items()})
        except InvalidInput:
            raise
        except Exception as e:  # the model's forward on the task's inputs: any type
            raise InvalidInput(
                f"{type(model).__name__} fails on the inputs of task '{sig.task}' "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
            ) from None
    axes: dict[str, dict[int, str]] = {}
    for name in sig.outputs:
        sa, sb = tuple(oa[name].shape), tuple(ob[name].shape)
        axes[name] = {
            i: ("batch" if (x, y) == (2, 3) and i == 0 else f"{name}_{i}")
            for i, (x, y) in enumerate(zip(sa, sb, strict=True))
            if x != y
        }
    return axes


# --- loading ---------------------------------------------------------------------------------


def _pruning_record(path: Path) -> dict | None:
    from edgesmith.toolchain.models.encoder import CONFIG_KEY

    record = _config(path).get(CONFIG_KEY)
    if record is not None and not isinstance(record, dict):
        raise InvalidInput(f"{path}/config.json: {CONFIG_KEY} must be an object")
    return record


def _load_pruned_weights(model: Any, path: Path, record: dict) -> None:
    """The recorded shapes, then the folder's weights, every tensor checked (strict)."""
    from safetensors.torch import load_file

    from edgesmith.toolchain.models.encoder import rebuild_shapes
    from edgesmith.toolchain.models.students import pretrained_part

    rebuild_shapes(model, record)
    base = pretrained_part(model)
    files = sorted(Path(path).glob("*.safetensors"))
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    try:
        result = base.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch reports size mismatches this way
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), "")
        raise InvalidInput(
            f"{path}: the weights do not match the pruned shapes in config.json ({first})"
        ) from None
    tied = set(getattr(base, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise InvalidInput(
            f"{path}: the weights do not match the pruned shapes in config.json "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _library(path: Path, task: str) -> str:
    # a sentence-transformers folder (modules.json) with a task head is a transformers model
    if (Path(path) / "modules.json").is_file() and task == "feature-extraction":
        return "sentence_transformers"
    return "transformers"


def _from_pretrained(path: Path, task: str, library: str, kwargs: dict) -> Any:
    import torch
    import transformers

    if library == "sentence_transformers":
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise InvalidInput(
                f"{path}: a sentence-transformers folder (modules.json) needs the "
                "sentence-transformers package: pip install sentence-transformers"
            ) from None
        return SentenceTransformer(
            str(path), device="cpu", local_files_only=True, trust_remote_code=False,
            model_kwargs=kwargs,
        )  # fmt: skip
    major = int(transformers.__version__.split(".")[0])
    # transformers 5 loads in the checkpoint's dtype by default; the reference is float32
    dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    auto = getattr(transformers, f"AutoModelFor{TASKS[task][0]}" if TASKS[task][0] else "AutoModel")
    return auto.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, **dtype, **kwargs
    )


def load_hf(path: Path, task: str | None = None, head: dict | None = None) -> HfModel:
    """The folder's model for `task`. `head` (num_labels, id2label, label2id): a new task
    head of that shape on the folder's encoder, initialised from torch's random state (a
    pretrained encoder made into the student of a fine-tuned classifier: fine-pruning)."""
    path = Path(path)
    config = _config(path)
    if config.get("auto_map"):
        raise InvalidInput(
            f"{path}: config.json names custom code (auto_map); edgesmith does not run code "
            "from a model folder: export it with its own code as package.module:factory"
        )
    task = task or infer_task(path)
    if task not in TASKS:
        raise InvalidInput(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    library = _library(path, task)
    pruned = _pruning_record(path)
    # a pruned folder's FFN sizes differ per layer, which transformers cannot express: it
    # loads the model at full size, then our code gives it the recorded shapes and its weights
    extra = {"ignore_mismatched_sizes": True} if pruned or head else {}
    extra.update(head or {})
    # eager attention: one Softmax per layer in the ONNX (the engine's rewrites read it), where
    # the SDPA path exports as several ops and fails to export for some families (Swin)
    extra["attn_implementation"] = "eager"
    try:
        with _quiet():
            model = _from_pretrained(path, task, library, extra)
            if pruned:
                _load_pruned_weights(model, path, pruned)
    except (ValueError, KeyError, OSError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{path}: cannot load for task '{task}' ({first})") from None
    model = model.float().eval()
    return HfModel(path, task, library, model, signature_of(model, task, library))


class HfRunner:
    """Runs the PyTorch model of a Hugging Face folder on numpy feeds, outputs named as in ONNX."""

    def __init__(self, hf: HfModel, threads: int | None = None) -> None:
        self.hf = hf
        self.threads = threads
        sig = hf.signature
        self.io = IoSpec(
            tuple(
                TensorSpec(
                    n,
                    "int64" if n in INT_INPUTS else "float32",
                    tuple(axes.get(i, d) for i, d in enumerate(sig.shapes[n])),
                )
                for n, axes in sig.inputs.items()
            ),
            tuple(
                TensorSpec(n, "float32", tuple(axes.values())) for n, axes in sig.outputs.items()
            ),
        )

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from edgesmith.toolchain.models.torch import torch_threads

        args = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch_threads(self.threads), torch.inference_mode():
            out = self.hf.signature.call(self.hf.model, args)
        return {n: t.detach().cpu().float().numpy() for n, t in out.items()}


# --- export ----------------------------------------------------------------------------------


def default_exporter() -> str:
    return "torch"


def onnx_from_hf(hf: HfModel, out_dir: Path, opset: int, exporter: str = "torch") -> Path:
    """Export into `out_dir`: model.onnx, and the tokenizer and config files beside it."""
    from edgesmith.toolchain.core.files import carry_preprocessing

    if exporter == "optimum":
        return _optimum_export(hf, out_dir, opset)
    path = _torch_export(hf, out_dir / "model.onnx", opset)
    carry_preprocessing(hf.path, out_dir)
    return path


def _torch_export(hf: HfModel, out: Path, opset: int) -> Path:
    import torch

    from edgesmith.toolchain.models.torch import ExportCall, export_onnx, export_view

    sig = hf.signature
    names = list(sig.inputs)
    example = hf.example(batch=2, seq=16)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    config = _text_config(hf.model)
    dims: dict[str, Any] = {}
    for axes in sig.inputs.values():
        for name in axes.values():
            top = getattr(config, "max_position_embeddings", None) if name == "sequence" else None
            if name not in dims:
                # a model with position embeddings takes at most that many tokens
                dims[name] = torch.export.Dim(name, max=int(top)) if top else torch.export.Dim(name)
    shapes = {n: {i: dims[a] for i, a in axes.items()} or None for n, axes in sig.inputs.items()}

    def call(*tensors: torch.Tensor) -> list[torch.Tensor]:
        return list(sig.call(hf.model, dict(zip(names, tensors, strict=True))).values())

    view = export_view(hf.model, names, call)
    with _quiet():
        export_onnx(ExportCall(view, args, names, list(sig.outputs), shapes), out, opset)
    return out


def _optimum_export(hf: HfModel, out_dir: Path, opset: int) -> Path:
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the families)
        from optimum.exporters.onnx import onnx_export_from_model
        from optimum.utils.save_utils import maybe_load_preprocessors
    except ImportError as e:
        raise InvalidInput(
            f"--exporter optimum needs optimum-onnx ({e}); pip install 'edgesmith[optimum]' "
            "(it requires transformers < 4.58), or use --exporter torch"
        ) from None
    task = "feature-extraction" if hf.library == "sentence_transformers" else hf.task
    try:
        with _quiet():
            onnx_export_from_model(
                hf.model,
                str(out_dir),
                opset=opset,
                task=task,
                do_validation=False,
                preprocessors=maybe_load_preprocessors(str(hf.path)),
                library_name=hf.library,
            )
    except Exception as e:  # optimum raises many types; surface one line
        from edgesmith.toolchain.core.errors import caused_by

        cause = caused_by(e, (KeyboardInterrupt, OSError))
        if cause is not None:
            raise cause from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{hf.path}: optimum export failed ({first})") from None
    _follow_inputs(hf.signature, out_dir / "model.onnx")
    return out_dir / "model.onnx"


def _follow_inputs(sig: HfSignature, path: Path) -> None:
    """optimum's family configs leave out inputs a model takes with a default (RoBERTa's
    token_type_ids): the source is then run without them too, as the ONNX is."""
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    text = {n: a for n, a in sig.inputs.items() if n in TEXT_INPUTS}
    if "position_ids" in names and text:  # decoders: optimum exports their positions
        axes = next(iter(text.values()))
        sig.inputs["position_ids"], sig.shapes["position_ids"] = dict(axes), sig.shapes["input_ids"]
    unknown = [n for n in names if n not in sig.inputs]
    if unknown:
        raise InvalidInput(
            f"optimum's export takes inputs edgesmith does not feed ({', '.join(unknown)}); "
            "use --exporter torch"
        )
    sig.inputs = {n: axes for n, axes in sig.inputs.items() if n in names}
