# make lab   - create .venv if needed, install, open JupyterLab on notebooks/
# make test  - create/update .venv, run the unit tests and execute every notebook (nbmake)
# make slides        - the notebooks as reveal.js slides in build/slides/, offline (EXECUTE=0: skip
#                      running them first, no outputs on the slides)
# make browser-test  - notebook 00, Run All in JupyterLab in a real Chromium (Playwright)
PYTHON ?= python3
VENV   ?= .venv
JOBS   ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test test-gpu install clean distclean slides browser-test

# (as root, e.g. in a container, JupyterLab needs --allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# One pytest run: notebooks (the long items) first so pytest-xdist spreads them over workers.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --nbmake notebooks tests

# On a machine with an NVIDIA GPU: the tests that run kernels through ct.launch.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu tests

# Slide types come from the headings (teaching/slides.py); `python -m teaching.slides tag` writes
# them into the notebooks.
EXECUTE ?= 1
slides: $(STAMP)
	$(BIN)/python -m teaching.slides build $(if $(filter 1,$(EXECUTE)),--execute)

# Uses the system Chromium (apt-get install chromium); skipped with the reason if there is none.
browser-test: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[browser]"
	$(BIN)/python -m teaching.slides build notebooks/00_tiles.ipynb
	MOE_TUTORIAL_BROWSER_TEST=1 $(BIN)/python -m pytest -p no:xdist tests/test_browser.py -v -rs

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
