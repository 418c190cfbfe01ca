# The README's two commands: `make demo` and `make test`. Each installs what it needs on a fresh
# Debian machine (as root): apt packages, a .venv with the package and its test extras, a Docker
# engine, the local mosquitto image for the container backend and the node image (redy/node).

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
APT_PACKAGES := mosquitto mosquitto-clients docker.io docker-compose python3-venv python3-pip iproute2 iptables faketime chromium chromium-driver
DEMO_DURATION ?= 90
# The live web page (redy dashboard) of the demo; its address is printed at start.
DEMO_WEB_PORT ?= 8050
# More arguments of the demo's launch, e.g. other ports: DEMO_ARGS='gas_port:=21841 ...'.
DEMO_ARGS ?=

# `make study`: the shuffle study (docs/shuffle-study.md) from sweeps run here. One worker by
# default (the machine may be shared); STUDY_JOBS=2 uses both cores. About 20 min on one core.
STUDY_GRID ?= view=4,8,12,20,30 shuffle=2,4,8 period_s=0.5,1,2,5
STUDY_NODES ?= 1000
STUDY_SEEDS ?= 5
STUDY_JOBS ?= 1

.PHONY: demo test deps venv docker image lint typecheck pytest clean study docs

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Debian starts mosquitto as a service on 1883 on install; our brokers use their own ports.

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

docker: deps
	bash brokers/start-dockerd.sh

image: docker venv
	bash brokers/image/build.sh
	bash brokers/node-image/build.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv image
	TESTCONTAINERS_RYUK_DISABLED=true $(VENV)/bin/pytest

test: deps venv image lint typecheck pytest

demo: deps venv
	$(VENV)/bin/redy launch launch/figure3.yaml --duration $(DEMO_DURATION) --table --web $(DEMO_WEB_PORT) $(DEMO_ARGS)

# The documentation site: the reference pages written from the code and the dashboard's picture
# from the browser test's last run, then the site built in strict mode (a warning, a broken link
# or a page missing from mkdocs.yml fails) into build/site. `make test` checks the same through
# tests/docs (the pages in the repository are what the code writes, and the strict build passes).
docs: venv
	$(VENV)/bin/python -m redy.docs_reference docs/reference
	@# the dashboard's picture, as the browser test (tests/dashboard) last saw it
	if [ -f build/docs/dashboard.png ]; then cp build/docs/dashboard.png docs/images/dashboard.png; fi
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

study: venv
	$(VENV)/bin/pip install -q -e '.[study]'
	$(VENV)/bin/redy sim sweep membership --grid '$(STUDY_GRID)' --nodes $(STUDY_NODES) \
	    --seeds $(STUDY_SEEDS) --jobs $(STUDY_JOBS) -o docs/shuffle-study.csv
	$(VENV)/bin/redy sim sweep balance --grid '$(filter-out period_s=%,$(STUDY_GRID)) period_s=2' \
	    --nodes $(STUDY_NODES) --seeds 3 --scenario none --jobs $(STUDY_JOBS) \
	    -o docs/shuffle-study-market.csv
	$(VENV)/bin/redy sim sweep membership --grid 'view=8,12 shuffle=2,4 period_s=2' \
	    --nodes 10000 --seeds 2 --jobs $(STUDY_JOBS) -o docs/shuffle-study-10k.csv
	$(VENV)/bin/redy sim study docs/shuffle-study.csv --balance docs/shuffle-study-market.csv \
	    --scale docs/shuffle-study-10k.csv --docs docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
