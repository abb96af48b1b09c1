# make lab   - create .venv if needed, install, open JupyterLab on your working copy, lab/
#              (copied from notebooks/ on the first run, never overwritten afterwards)
# make reset NB=01_routing  - restore lab/01_routing.ipynb from notebooks/ (yours goes to .bak)
# make test  - create/update .venv, run the unit tests and execute every notebook (nbmake)
# make slides        - the notebooks as reveal.js slides in build/slides/, offline (EXECUTE=0: skip
#                      running them first, no outputs on the slides)
# make browser-test  - notebook 00, Run All in JupyterLab in a real Chromium (Playwright)
PYTHON ?= python3
LAB    ?= lab
VENV   ?= .venv
JOBS   ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab reset test test-gpu install clean distclean slides browser-test

# (as root, e.g. in a container, JupyterLab needs --allow-root)
# The committed notebooks stay untouched: JupyterLab opens lab/ (git-ignored), and copies only
# the notebooks lab/ does not have yet, so your work is never overwritten.
lab: $(STAMP)
	@mkdir -p $(LAB)/solutions
	@for f in notebooks/*.ipynb notebooks/solutions/*.ipynb; do \
	  dst=$(LAB)/$${f#notebooks/}; [ -e $$dst ] || cp $$f $$dst; done
	$(BIN)/jupyter lab $(LAB)/ $(if $(filter 0,$(shell id -u)),--allow-root)

reset:
	@test -n "$(NB)" || { echo "usage: make reset NB=01_routing"; exit 2; }
	@src=notebooks/$(NB).ipynb; dst=$(LAB)/$(NB).ipynb; \
	case "$(NB)" in *_solutions) src=notebooks/solutions/$(NB).ipynb; \
	  dst=$(LAB)/solutions/$(NB).ipynb;; esac; \
	test -f $$src || { echo "no notebook $$src"; exit 2; }; \
	mkdir -p $$(dirname $$dst); \
	if [ -f $$dst ]; then cp $$dst $$dst.bak; echo "your version: $$dst.bak"; fi; \
	cp $$src $$dst && echo "restored $$dst from $$src"

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
