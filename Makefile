# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on these machines' disk; elsewhere see the README (TORCH_SPEC=torch, and
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only build on Linux).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-slow test-reference lab clean venv strip-notebooks git-filters wheel
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev,notebooks,sam]"
	touch $@

demo: venv
	$(PY) -m lmd_utils demo --out demo.png

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

# our stage 2 against the authors' generation/lmd.py on one random-weight model (needs ../shared/reference; else skips)
test-reference: venv
	bash tests/reference/run.sh

# a wheel of lmd_utils (templates and the toy-world model included) for an instructor to hand out: dist/*.whl
wheel: venv
	$(PY) -m pip wheel -q --no-deps -w dist .

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

strip-notebooks: venv
	$(PY) scripts/strip_notebooks.py

# once per clone: strip notebook outputs on `git add` (git cannot commit a filter's command)
git-filters:
	git config filter.strip-notebooks.clean "$(PY) scripts/strip_notebooks.py --stdin"
	git config filter.strip-notebooks.smudge cat

clean:
	rm -rf $(VENV) .pytest_cache dist
