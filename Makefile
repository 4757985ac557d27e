# lmcli: `make demo` and `make test` each work as the first command on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast bench bench-quality bench-terms bench-ablation gpu-check lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/lmcli prepare sample_data/corpus.txt --out $(DEMO)/data --vocab-size 1000 --seed 1
	$(BIN)/lmcli train $(DEMO)/data --run-dir $(DEMO)/run --loss full --epochs 3 \
		--embedding-dim 128 --hidden 256 --batch-size 32 --seq-len 35 --lr 0.003
	$(BIN)/lmcli eval $(DEMO)/run --split test
	$(BIN)/lmcli export $(DEMO)/run --out $(DEMO)/export
	$(BIN)/lmcli generate $(DEMO)/export --prompt "The" --max-tokens 40 --seed 1

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

bench-terms: $(STAMP)
	$(BIN)/python bench/quality.py --tables terms

bench-ablation: $(STAMP)
	$(BIN)/python bench/ablation.py

gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out gpu-check

lint: $(STAMP)
	$(BIN)/ruff check lmcli tests bench sample_data

clean:
	rm -rf $(VENV) $(DEMO) gpu-check build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
