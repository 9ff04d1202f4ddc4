# The two commands (see README): `make run` and `make test`. Both create .venv on first use and are idempotent.
SHELL := /bin/bash
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_USAGE_STATS_ENABLED := 0
PY := .venv/bin/python

.PHONY: run test test-compat setup
setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m rlpt.cli train $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole compatibility matrix (make test runs its fast cells): every family x tokenizer x template cell.
test-compat: setup
	RLPT_COMPAT=full $(PY) -m pytest tests/ray/test_compat_matrix.py $(PYTEST_ARGS)
