# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make sweep   creates .venv if missing, runs a real sweep and builds its report
#   make test    creates .venv if missing, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
SWEEP_DIR ?= outputs/sweeps/demo
# The demo sweep: the exercise's network across activation, depth and BatchNorm,
# 4 seed replicas each, 100 SGD steps on the teacher task (linear output layer).
SWEEP_ARGS ?= act=sigmoid,tanh,relu depth=5,10,20 batchnorm=false,true output_act=false \
	replicas=4 steps=100 log_every=5 loss=mse lr=0.05

.PHONY: venv sweep test test-all lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev,tensorboard,wandb,triton]"
	touch $(STAMP)

sweep: $(STAMP)
	$(BIN)/python -m gradsweep -m $(SWEEP_ARGS) hydra.sweep.dir=$(SWEEP_DIR)
	$(BIN)/python -m gradsweep.report $(SWEEP_DIR) -o $(SWEEP_DIR)/report

test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-all: lint
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/instrumentation_overhead.py
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) outputs/runs outputs/sweeps
