# make lab   - create .venv if needed, install, open JupyterLab on notebooks/
# make test  - create/update .venv, run the unit tests and execute every notebook (nbmake)
PYTHON ?= python3
VENV   ?= .venv
JOBS   ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test test-gpu install clean distclean

# (as root, e.g. in a container, JupyterLab needs --allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# One pytest run: notebooks (the long items) first so pytest-xdist spreads them over workers.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --nbmake notebooks tests

# On a machine with an NVIDIA GPU: the tests that run kernels through ct.launch.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu tests

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changed (or the venv is new).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
