# Every target does its own set-up (a local .venv; CPU build of torch on a CPU-only machine).
PY := .venv/bin/python
OUT ?= outputs

.PHONY: setup demo test test-fast bench reproduce lint clean

setup:
	@bash scripts/setup.sh

demo: setup            ## the main job on built-in data
	$(PY) -m ssmkit.cli demo --out $(OUT)

test: setup            ## the whole test suite, two workers
	$(PY) -m pytest -n 2 -q tests

test-fast: setup
	$(PY) -m pytest -n 2 -q -m "not slow" tests

bench: setup           ## speed and memory benchmarks, ratios in one run
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks

reproduce: setup       ## the papers' claims at small scale -> docs/results.md
	$(PY) -m benchmarks.reproduce

lint: setup
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf .venv outputs .pytest_cache
