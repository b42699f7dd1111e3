# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo text-classifier test test-gpu lint bench clean

setup: $(VENV)/.installed

# torch first, pinned to the CPU build on this disk; everything else must not pull another.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
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

test: setup
	$(BIN)/python -m pytest -q -m "not gpu"

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

lint: setup
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
