# Quick start:  make run   (venv, install, demo root, server on unprivileged ports)
#               make test  (the whole test suite)
PYTHON ?= python3
VENV ?= .venv
DEMO_ROOT ?= $(CURDIR)/demo-root
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install clean lint

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

run: $(STAMP)
	$(VENV)/bin/indimail-demo --root $(DEMO_ROOT) --run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto tests
	rm -rf tests.*/ _trial_temp*/

lint: $(STAMP)
	$(VENV)/bin/python -m ruff check indimail_tw tests

clean:
	rm -rf $(VENV) $(DEMO_ROOT) build *.egg-info tests.*/ _trial_temp*/
