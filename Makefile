# Two commands on a fresh machine:
#   make demo   create .venv, install glassformer, run its main job (train German -> English, evaluate, translate)
#   make test   create .venv, install the dev extras, run ruff and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo tour test test-classes lint bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "glassformer needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# the main job: German -> English on the Bible corpus, trained for DEMO_MINUTES on this machine; the model size and
# batch (preset auto) and the device and precision (auto) are chosen for what this machine measures and can do;
# DEMO_RECIPE=fast trains with the speedrun's changes (README: the recipes)
DEMO_MINUTES ?= 10
DEMO_RECIPE ?= paper
ifndef DEMO_RUN
DEMO_RUN := runs/de-en-$(shell date +%Y%m%d-%H%M%S)
endif
demo: $(VENV)/.installed
	$(BIN)/glassformer data get bible
	$(BIN)/glassformer env
	$(BIN)/glassformer train translate --data bible --preset auto --recipe $(DEMO_RECIPE) --max-minutes $(DEMO_MINUTES) \
		--out $(DEMO_RUN)
	$(BIN)/glassformer evaluate --model $(DEMO_RUN) --beam 4
	@echo "three held-out verses (test split) and one sentence from outside the Bible:"
	$(BIN)/glassformer translate --model $(DEMO_RUN) \
		"Und Jehova Gott rief den Menschen und sprach zu ihm: Wo bist du?" \
		"Und Jakob küßte Rahel und erhob seine Stimme und weinte." \
		"Und er sprach: Laß mich doch deine Herrlichkeit sehen!" \
		"Die Kinder spielen im Garten, und ihre Mutter ruft sie zum Essen."
	@echo "run directory: $(DEMO_RUN)"

tour: $(VENV)/.installed
	$(BIN)/glassformer tour

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# the tests whose outcome depends on the CPU class or the precision (marked cpu_class), again as if this CPU could
# do no more than each class below its own (GLASSFORMER_CPU; on an AVX512-BF16 machine: avx512, then "AVX2 only")
test-classes: $(VENV)/.installed-dev
	@for class in $$($(BIN)/python -c 'from glassformer import cpu; print(*cpu.narrower_classes())'); do \
		echo "== GLASSFORMER_CPU=$$class: $$(GLASSFORMER_CPU=$$class $(BIN)/glassformer env | tail -n 1)"; \
		GLASSFORMER_CPU=$$class $(BIN)/python -m pytest -m cpu_class -p no:cacheprovider || exit 1; \
	done

bench: $(VENV)/.installed
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info test-artifacts
