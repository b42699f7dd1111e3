"""Hugging Face model folders, exported through optimum's ONNX exporter.

optimum knows each model family's inputs, outputs and dynamic axes (its OnnxConfig is the
family spec); we load the model once, export it with optimum, and keep the loaded model
as the reference our own check runs against.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.artifact import IoSpec, TensorSpec
from toolchain.core.errors import InvalidInput

# Class-name suffix of config.architectures → optimum task (optimum's own inference needs the Hub).
ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForMultipleChoice": "multiple-choice",
    "ForImageClassification": "image-classification",
    "ForCausalLM": "text-generation",
    "Model": "feature-extraction",
}


def infer_task(path: Path) -> str:
    config = json.loads((Path(path) / "config.json").read_text())
    for arch in config.get("architectures") or []:
        for suffix, task in ARCHITECTURE_TASKS.items():
            if arch.endswith(suffix):
                return task
    raise InvalidInput(
        f"{path}: cannot infer the task from config.json architectures "
        f"{config.get('architectures')}; pass --task (e.g. text-classification, feature-extraction)"
    )


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    old = logging.getLogger("optimum").level
    logging.getLogger("optimum").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
        logging.getLogger("optimum").setLevel(old)


@dataclass
class HfModel:
    path: Path
    task: str
    library: str
    model: Any
    onnx_config: Any

    def example(self, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
        """Dummy inputs from optimum's family spec (token ids in the vocabulary, full masks)."""
        feeds = self.onnx_config.generate_dummy_inputs(
            framework="np", batch_size=batch, sequence_length=seq
        )
        return {k: np.asarray(v) for k, v in feeds.items() if k in self.onnx_config.inputs}


def _pruning_record(path: Path) -> dict | None:
    from toolchain.prune.encoder import CONFIG_KEY

    try:
        record = json.loads((Path(path) / "config.json").read_text()).get(CONFIG_KEY)
    except (OSError, ValueError, AttributeError):
        return None  # the loader below reports an unreadable config in its own words
    if record is not None and not isinstance(record, dict):
        raise InvalidInput(f"{path}/config.json: {CONFIG_KEY} must be an object")
    return record


def _load_pruned_weights(model: Any, path: Path, record: dict) -> None:
    """The recorded shapes, then the folder's weights, every tensor checked (strict)."""
    from safetensors.torch import load_file

    from toolchain.distill.students import pretrained_part
    from toolchain.prune.encoder import rebuild_shapes

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


def load_hf(path: Path, task: str | None = None) -> HfModel:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model families)
    from optimum.exporters.tasks import TasksManager

    path = Path(path)
    library = TasksManager.infer_library_from_model(str(path))
    task = task or infer_task(path)
    if library == "sentence_transformers" and task != "feature-extraction":
        library = "transformers"  # a sentence-transformers folder with a task head
    pruned = _pruning_record(path)
    # a pruned folder's FFN sizes differ per layer, which transformers cannot express: it
    # loads the model at full size, then our code gives it the recorded shapes and its weights
    extra = {"ignore_mismatched_sizes": True} if pruned else {}
    try:
        with _quiet():
            model = TasksManager.get_model_from_task(
                task, str(path), framework="pt", library_name=library, local_files_only=True,
                **extra,
            )  # fmt: skip
            if pruned:
                _load_pruned_weights(model, path, pruned)
            ctor = TasksManager.get_exporter_config_constructor(
                "onnx", model=model, task=task, library_name=library
            )
            onnx_config = ctor(model.config)
    except (ValueError, KeyError, OSError) as e:
        raise InvalidInput(
            f"{path}: cannot load for task '{task}' ({str(e).splitlines()[0]})"
        ) from None
    return HfModel(path, task, library, model.eval(), onnx_config)


class HfRunner:
    """Runs the PyTorch model of a Hugging Face folder on numpy feeds, outputs named as in ONNX."""

    def __init__(self, hf: HfModel, threads: int | None = None) -> None:
        self.hf = hf
        self.threads = threads
        cfg = hf.onnx_config
        self.io = IoSpec(
            tuple(
                TensorSpec(n, "int64", tuple(axes.get(i, f"{n}_{i}") for i in range(2)))
                for n, axes in cfg.inputs.items()
            ),
            tuple(
                TensorSpec(n, "float32", tuple(axes.values())) for n, axes in cfg.outputs.items()
            ),
        )

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from toolchain.export.torch import torch_threads

        args = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        patch = self.hf.onnx_config.patch_model_for_export(self.hf.model)
        with patch, torch_threads(self.threads), torch.inference_mode():
            out = self.hf.model(**args)
        return {n: out[n].detach().cpu().numpy() for n in self.hf.onnx_config.outputs}


def onnx_from_hf(hf: HfModel, out_dir: Path, opset: int | None) -> Path:
    """Export into `out_dir` (model.onnx + the tokenizer and config files beside it)."""
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils.save_utils import maybe_load_preprocessors

    try:
        with _quiet():
            onnx_export_from_model(
                hf.model,
                str(out_dir),
                opset=opset,
                task=hf.task,
                do_validation=False,
                preprocessors=maybe_load_preprocessors(str(hf.path)),
            )
    except (ValueError, KeyError, RuntimeError) as e:
        raise InvalidInput(f"{hf.path}: optimum export failed ({str(e).splitlines()[0]})") from e
    return out_dir / "model.onnx"
