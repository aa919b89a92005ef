# One command to set up and run each job; everything installs into .venv from PyPI.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

demo: setup
	$(BIN)/labeler demo --out $(DEMO)

test: setup
	$(BIN)/pytest -q

# No servers, no browser, no training: seconds to a couple of minutes (README "Tests").
test-fast: setup
	$(BIN)/pytest -q -m "not slow and not labelstudio and not postgres and not browser and not train"

bench: setup
	$(BIN)/python benchmarks/engine.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/backend.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/prelabel.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/cam_quality.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/prelabel_quality.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/segmenter_loop.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/learning_curve.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/export_memory.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/prelabel_scale.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/scale.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/stats_scale.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/clicks.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) out
