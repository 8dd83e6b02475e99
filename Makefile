# The README's two commands. Each installs what it needs first (into .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo search test install

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: a DERD search on digits.
demo: $(STAMP)
	$(BIN)/python tuning/search.py --dataset digits

# The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q
