# Two commands on a fresh machine with Python >= 3.10: `make demo` and `make test`.
# Both create .venv at the repository root and install what they need (once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,plots]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m viclip_ot.demo

test: $(STAMP)
	$(PY) -m pytest tests
