# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo text-classifier fine-prune test test-tf4 test-gpu lint docs bench support-table clean

setup: $(VENV)/.installed

# torch first, pinned to the CPU build on this disk; everything else must not pull another.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# NVIDIA's TensorRT bindings (no libraries, ~1.3 MB each) for the API-conformance test
	# (tests/targets/test_tensorrt_api.py); pip download skips wheels already in the folder.
	mkdir -p $(VENV)/tensorrt-bindings
	for w in tensorrt-cu12-bindings==10.0.1 tensorrt-cu13-bindings==10.13.3.9 \
	         tensorrt-cu13-bindings==10.16.1.11 tensorrt-cu13-bindings==11.4.0.106; do \
	  $(BIN)/pip download -q --no-deps -d $(VENV)/tensorrt-bindings $$w || exit 1; done
	touch $@

build/digits/model.safetensors: examples/digits.py | setup
	$(BIN)/python examples/digits.py --out build/digits

demo: setup build/digits/model.safetensors
	$(BIN)/edgesmith run recipes/digits.toml
	$(BIN)/edgesmith run recipes/digits_distill.toml

build/text_classifier/model/model.safetensors: examples/text_classifier.py | setup
	$(BIN)/python examples/text_classifier.py --out build/text_classifier

# The fine-tuned text classifier: prune → export → quantize → build → validate (a few minutes).
text-classifier: setup build/text_classifier/model/model.safetensors
	$(BIN)/edgesmith run recipes/text_classifier.toml

# Fine-pruning: the pretrained encoder pruned by movement while it learns from the classifier.
fine-prune: setup build/text_classifier/model/model.safetensors
	$(BIN)/python -c "from pathlib import Path; from examples.text_classifier import \
	write_initial_model; write_initial_model(Path('build/text_classifier/pretrained'))"
	$(BIN)/edgesmith run recipes/fine_prune.toml

test: setup
	$(BIN)/python -m pytest -q -m "not gpu"

# The Hugging Face tests again on transformers 4.57, the architecture matrix through
# optimum-onnx's exporter (it requires transformers < 4.58): CI's second job.
VENV_TF4 := .venv-tf4
$(VENV_TF4)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TF4)
	$(VENV_TF4)/bin/pip install -q --upgrade pip
	$(VENV_TF4)/bin/pip install -q torch==2.13.0
	$(VENV_TF4)/bin/pip install -q -e '.[dev,optimum]' 'transformers>=4.57,<4.58'
	touch $@

test-tf4: $(VENV_TF4)/.installed
	EDGESMITH_EXPORTER=optimum $(VENV_TF4)/bin/python -m pytest -q -m "not gpu" \
		tests/export tests/prune/test_prune.py tests/distill/test_minilm.py

# docs/support.md: every family of tests/hf_families.py through every stage, on this venv's
# transformers (torch exporter) and on transformers 4.57 (torch and optimum exporters).
support-table: setup $(VENV_TF4)/.installed
	$(BIN)/python benchmarks/support_matrix.py --exporter torch
	$(VENV_TF4)/bin/python benchmarks/support_matrix.py --exporter torch
	$(VENV_TF4)/bin/python benchmarks/support_matrix.py --exporter optimum
	$(BIN)/python benchmarks/support_matrix.py --render docs/support.md

# On a machine with an NVIDIA GPU and `pip install '.[gpu]'`: the gpu-marked tests, then the
# digits CNN and MiniLM (int8 Q/DQ and fp16) built, loaded, validated and benched on trt-gpu
# and ort-gpu, one table (benchmarks/gpu_check.py; under ten minutes).
test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu
	$(BIN)/python benchmarks/gpu_check.py --out build/gpu-check

# The documentation site (mkdocs.yml → build/site): the references regenerated from the code,
# then built with --strict (a broken link or a missing page fails).
docs: setup
	$(BIN)/python tools/docs_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup build/digits/model.safetensors
	$(BIN)/python benchmarks/export_minilm.py
	$(BIN)/python benchmarks/engine_vs_eager.py
	$(BIN)/python benchmarks/quantize_digits.py
	$(BIN)/python benchmarks/quantize_minilm.py
	$(BIN)/python benchmarks/distill_digits.py
	$(BIN)/python benchmarks/distill_minilm.py
	$(BIN)/python benchmarks/prune_digits.py

clean:
	rm -rf build
