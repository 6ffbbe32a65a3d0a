# The two set-up commands of the README:
#   make demo   installs everything into .venv and runs the CPU demo on the synthetic data
#   make test   installs everything into .venv and runs the whole test suite
# and: make figures (the README's pictures)
# Only python3 (3.9+) is needed beforehand.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install demo test figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e '.[notebooks,dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/spatialflow demo

test: install
	$(PY) -m pytest -q

# the README's pictures (docs/figures/*.png) from the Table V study runs in runs/studies
# (shared with notebook 02: its default study is the same 24 runs of 500 iterations; missing runs
# are trained first, two at a time)
figures: install
	$(PY) -m viz.figures

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .hypothesis
