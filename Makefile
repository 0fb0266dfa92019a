# Set-up and checks. `make test` and `make demo` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned `pip install torch` pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: install test lint typecheck pytest demo docs bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	# integrations: darts, neuralforecast, pytorch-forecasting, for their tests (about 1 min more, ~1.5 GB).
	$(BIN)/python -m pip install -q -e ".[dev,integrations]" "$(TORCH_PIN)"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check rnn_stability tests examples benchmarks
	$(BIN)/ruff format --check rnn_stability tests examples benchmarks

typecheck: install
	$(BIN)/mypy

pytest: install
	RNN_STABILITY_REQUIRE_NATIVE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

docs: install
	$(BIN)/mkdocs build --strict

demo: install
	-$(BIN)/rnn-stability build-native
	$(BIN)/rnn-stability demo

bench: install
	$(BIN)/python benchmarks/rnn_speed.py
	$(BIN)/python benchmarks/callback_overhead.py
	$(BIN)/python benchmarks/gradient_flow_overhead.py
	$(BIN)/python -m pip install -q --no-deps timm  # AGC reference; its torchvision would not load here
	$(BIN)/python benchmarks/clip_speed.py

clean:
	rm -rf $(VENV) site build *.egg-info
