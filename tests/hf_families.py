"""Tiny random-init Hugging Face models, one per architecture family, built inside the tests
(no download): the architecture matrix (tests/export/test_matrix.py, `make support-table`).

Each family is a transformers config class, the model class that gives it its task head, and
the few settings that make it tiny. A folder is what a user brings: config.json and
model.safetensors (and, for text, a small tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 96
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
)
IMAGE = dict(image_size=32, num_channels=3)
VIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, patch_size=8
)
CONV = dict(num_channels=3, image_size=32)
AUDIO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    conv_dim=(16, 16),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    vocab_size=VOCAB,
)
LABELS = dict(num_labels=3)


@dataclass(frozen=True)
class Family:
    name: str  # the architecture family, as the support table names it
    config: str  # transformers config class
    model: str  # transformers model class (its task head)
    task: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    modality: str = "text"
    structured: bool = False  # structured prune applies (an encoder stack of heads and FFNs)


FAMILIES: tuple[Family, ...] = (
    Family("bert", "BertConfig", "BertForSequenceClassification", "text-classification",
           {**TEXT, **LABELS}, structured=True),
    Family("roberta", "RobertaConfig", "RobertaForTokenClassification", "token-classification",
           {**TEXT, **LABELS, "pad_token_id": 1, "type_vocab_size": 1}),
    Family("distilbert", "DistilBertConfig", "DistilBertForQuestionAnswering", "question-answering",
           dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=48,
                max_position_embeddings=64)),
    Family("albert", "AlbertConfig", "AlbertForSequenceClassification", "text-classification",
           {**TEXT, **LABELS, "embedding_size": 16}),
    Family("electra", "ElectraConfig", "ElectraModel", "feature-extraction",
           {**TEXT, "embedding_size": 16}),
    Family("deberta-v2", "DebertaV2Config", "DebertaV2ForSequenceClassification",
           "text-classification", {**TEXT, **LABELS}),
    Family("xlm-roberta", "XLMRobertaConfig", "XLMRobertaForSequenceClassification",
           "text-classification", {**TEXT, **LABELS, "pad_token_id": 1, "type_vocab_size": 1},
           structured=True),
    Family("mpnet", "MPNetConfig", "MPNetModel", "feature-extraction", {**TEXT, "pad_token_id": 1}),
    Family("modernbert", "ModernBertConfig", "ModernBertForSequenceClassification",
           "text-classification",
           {**TEXT, **LABELS, "global_attn_every_n_layers": 1, "local_attention": 16,
            "pad_token_id": 0}),
    Family("mobilebert", "MobileBertConfig", "MobileBertForSequenceClassification",
           "text-classification",
           {**TEXT, **LABELS, "embedding_size": 16, "intra_bottleneck_size": 16,
            "true_hidden_size": 16, "num_feedforward_networks": 1}),
    Family("electra-mlm", "ElectraConfig", "ElectraForMaskedLM", "fill-mask",
           {**TEXT, "embedding_size": 16}),
    Family("gpt2", "GPT2Config", "GPT2ForSequenceClassification", "text-classification",
           dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                pad_token_id=0, **LABELS)),
    Family("llama", "LlamaConfig", "LlamaModel", "feature-extraction",
           {**TEXT, "num_key_value_heads": 1, "pad_token_id": 0}),
    Family("qwen2", "Qwen2Config", "Qwen2ForSequenceClassification", "text-classification",
           {**TEXT, **LABELS, "num_key_value_heads": 1, "pad_token_id": 0}),
    Family("vit", "ViTConfig", "ViTForImageClassification", "image-classification",
           {**VIT, **IMAGE, **LABELS}, "image", structured=True),
    Family("deit", "DeiTConfig", "DeiTForImageClassification", "image-classification",
           {**VIT, **IMAGE, **LABELS}, "image", structured=True),
    Family("dinov2", "Dinov2Config", "Dinov2Model", "feature-extraction",
           {**VIT, **IMAGE}, "image"),
    Family("swin", "SwinConfig", "SwinForImageClassification", "image-classification",
           dict(**IMAGE, **LABELS, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                window_size=4), "image"),
    Family("convnext", "ConvNextConfig", "ConvNextForImageClassification",
           "image-classification",
           dict(**CONV, **LABELS, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), "image"),
    Family("resnet", "ResNetConfig", "ResNetForImageClassification", "image-classification",
           dict(**CONV, **LABELS, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), "image"),
    Family("regnet", "RegNetConfig", "RegNetForImageClassification", "image-classification",
           dict(**CONV, **LABELS, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                groups_width=8), "image"),
    Family("mobilenet-v2", "MobileNetV2Config", "MobileNetV2ForImageClassification",
           "image-classification", dict(**IMAGE, **LABELS, depth_multiplier=0.25), "image"),
    Family("mobilevit", "MobileViTConfig", "MobileViTForImageClassification",
           "image-classification",
           dict(**IMAGE, **LABELS, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16,
                16, 32], num_attention_heads=1), "image"),
    Family("efficientnet", "EfficientNetConfig", "EfficientNetForImageClassification",
           "image-classification",
           dict(**IMAGE, **LABELS, width_coefficient=0.1, depth_coefficient=0.1,
                hidden_dim=128), "image"),
    Family("wav2vec2", "Wav2Vec2Config", "Wav2Vec2ForSequenceClassification",
           "audio-classification", {**AUDIO, **LABELS, "classifier_proj_size": 16}, "audio",
           structured=True),
    Family("hubert", "HubertConfig", "HubertForCTC", "automatic-speech-recognition",
           {**AUDIO, "pad_token_id": 0}, "audio"),
    Family("ast", "ASTConfig", "ASTForAudioClassification", "audio-classification",
           dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                patch_size=16, max_length=64, num_mel_bins=32, frequency_stride=16,
                time_stride=16, **LABELS), "audio", structured=True),
)  # fmt: skip
BY_NAME = {f.name: f for f in FAMILIES}


def build(family: Family, out: Path, seed: int = 0) -> Path:
    """A tiny random-init model of `family` saved as a Hugging Face folder at `out`."""
    import torch
    import transformers

    config = getattr(transformers, family.config)(**family.kwargs)
    config.architectures = [family.model]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, family.model)(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if family.modality == "text":
        write_tokenizer(out)
    return out


def write_tokenizer(out: Path) -> None:
    """A small word-level tokenizer (its vocabulary: the words of the samples below)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.lower().split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2} | {w: i + 3 for i, w in enumerate(words)}
    vocab = {w: i for w, i in vocab.items() if i < VOCAB}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]"
    )
    fast.save_pretrained(str(out))


SENTENCES = (
    "the engine runs on the device",
    "a model is exported and checked",
    "quantization keeps the accuracy within budget",
    "the gate fails when accuracy drops",
    "pruning removes heads and neurons",
    "a student learns from its teacher",
    "calibration data comes from real text",
    "the report names every metric",
)


def data(onnx_inputs: list[tuple[str, list]], n: int = 24, seed: int = 1) -> dict[str, Any]:
    """Sample arrays for the exported model's inputs ([(name, dims)]): token ids with padding
    at the end of some rows, or normal noise; dynamic axes at 16 steps (audio: 16 × 1600)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    lengths = rng.integers(6, 17, n)
    for name, dims in onnx_inputs:
        size = 4 * 1600 if name == "input_values" and len(dims) == 2 else 16
        shape = [n] + [d if isinstance(d, int) else size for d in dims[1:]]
        if name == "pixel_values":  # an exporter may leave every axis dynamic
            shape = [n, 3, 32, 32]
        if name == "input_ids":
            out[name] = rng.integers(3, VOCAB, shape).astype(np.int64)
        elif name == "attention_mask":
            out[name] = (np.arange(shape[-1]) < lengths[:, None]).astype(np.int64)
        elif name == "token_type_ids":
            out[name] = np.zeros(shape, dtype=np.int64)
        elif name == "position_ids":
            out[name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


# --- the matrix: each family through the command line -------------------------------------

STAGES = ("export", "prune", "quantize", "build", "validate")


@dataclass
class Outcome:
    code: int  # the command's exit code (None: not run, an earlier stage failed)
    seconds: float
    message: str  # its last line on stderr


def run_family(
    cli, family: Family, root: Path, exporter: str = "torch", prune_all: bool = False
) -> dict[str, Outcome]:
    """export → (structured prune) → quantize → build → validate, each an `edgesmith` command
    (`cli(*args)` returns .code and .stderr), on a tiny random-init model of `family`."""
    import time

    import onnx

    hf = build(family, root / "hf")
    out: dict[str, Outcome] = {}

    def step(name: str, *args: Any) -> bool:
        t = time.perf_counter()
        r = cli(*[str(a) for a in args])
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        out[name] = Outcome(r.code, time.perf_counter() - t, lines[-1] if lines else "")
        return r.code == 0

    if not step("export", "export", hf, "-o", root / "onnx", "--exporter", exporter):
        return out
    model = onnx.load(str(root / "onnx" / "model.onnx"), load_external_data=False)
    dims = [
        (i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
    ]
    np.savez(root / "data.npz", **data(dims))
    if family.structured or prune_all:
        step("prune", "prune", hf, "-o", root / "pruned", "--data", root / "data.npz",
             "--heads", "0.5", "--ffn", "0.5", "--epochs", "1")  # fmt: skip
    if not step("quantize", "quantize", root / "onnx", "-o", root / "int8",
                "--calibration", root / "data.npz", "--latency-batches", "off"):  # fmt: skip
        return out
    if not step("build", "build", root / "int8", "--target", "ort-cpu", "-o", root / "engine"):
        return out
    step("validate", "validate", root / "engine", "--reference", hf, "--data", root / "data.npz",
         "--metric", "cosine", "--max-drop", "0.05", "-o", root / "report")  # fmt: skip
    return out
