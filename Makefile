# Two commands set up a fresh machine and use it:
#   make demo   create .venv, install, and run cbpt-guard on the bundled example checkpoint
#   make test   create .venv, install, and run the test suite
# torch and torchvision are installed first, as the pair this project is pinned to.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cbpt-guard inspect examples/backdoored

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
