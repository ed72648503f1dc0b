# Two commands set up a fresh machine and use it:
#   make demo   create .venv, install, and run cbpt-guard on the bundled example checkpoint
#   make test   create .venv, install, and run the test suite
# torch and torchvision are installed first, as the pair this project is pinned to; the `zoo` extra is the research
# zoo (cbpt_guard_zoo) that the demo's images and the tests' models come from.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo examples clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[cpu,test,zoo]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cbpt-guard inspect examples/backdoored
	@echo
	@# held-out zoo images as a labelled ImageFolder, the few-shot data purification tunes and verifies on
	@test -d build/demo-data || $(VENV)/bin/cbpt-guard zoo images --out build/demo-data --per-class 40
	@# the main job: detect, decide, purify, verify, export, report; exit 0 means purified and verified.
	@# --overwrite: a second demo replaces the first one's report (cbpt-guard refuses a non-empty --out without it)
	@# balanced, not strict: strict also holds the dummies toward other classes to 2% and blocks this example (README)
	$(VENV)/bin/cbpt-guard check examples/backdoored --policy balanced --data build/demo-data --out build/demo-report --overwrite
	@echo "report: build/demo-report/report.html"

# Rebuild the two example checkpoints from scratch (deterministic; about 20 minutes on 2 cores, most of it the clean base).
examples: $(STAMP)
	$(VENV)/bin/cbpt-guard zoo build --out build/example-zoo --config vit --attacks badnets --seeds 1 --clean 1
	rm -rf examples/clean examples/backdoored
	mkdir -p examples/clean examples/backdoored
	cp build/example-zoo/vit/clean-s1/* examples/clean/
	cp build/example-zoo/vit/badnets-s0/* examples/backdoored/

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
