# Two entry points, each with its own virtual environment:
#   make demo  - install the library (runtime + plotting) and run the main job on embedded data
#   make test  - install the library with the dev extra, run ruff and the whole test suite
#                (which also builds the docs site in strict mode and runs every tutorial)
# Also: make docs (build the site into build/site, strict), make serve (preview it locally),
#       make tutorials (re-execute the notebooks in full mode and save their outputs).
PYTHON ?= python3
# The CPU build of torch installs from local disk in seconds; override to bring your own.
TORCH_SPEC ?= torch==2.13.0

TEST_VENV := .venv
DEMO_VENV := .venv-demo

.PHONY: demo test bench docs serve tutorials clean

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(TEST_VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(DEMO_VENV)/bin/python -m pip install -q -e ".[plot]"
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m humancompatible_train

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/python -m pytest

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python benchmarks/overhead.py

docs: $(TEST_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(TEST_VENV)/bin/mkdocs build --strict

serve: $(TEST_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(TEST_VENV)/bin/mkdocs serve

tutorials: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python docs/_ext/notebooks.py --save

clean:
	rm -rf $(TEST_VENV) $(DEMO_VENV) .pytest_cache .ruff_cache .hypothesis build/site
