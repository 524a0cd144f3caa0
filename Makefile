# The course's two commands (see README.md): `make course` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

# Measured here: glibc's malloc thresholds roughly halve PyTorch's CPU step times.
export MALLOC_MMAP_THRESHOLD_ = 4294967296
export MALLOC_TRIM_THRESHOLD_ = 4294967296
export PYTHONUNBUFFERED = 1

.PHONY: install course test lab clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# Every notebook, quick profile, into runs/ (executed notebooks, results JSON, runs/summary.md).
course: install
	$(PY) -m vklib.course run --profile quick --out runs

# Unit tests, then every notebook once (metrics bounds + NBVAL_CHECK_OUTPUT cells).
test: install
	$(PY) -m pytest

# The stored notebooks are the course's own: trust them, so that their stored widgets render (JupyterLab renders
# widget outputs of trusted notebooks only).
lab: install
	$(VENV)/bin/jupyter trust notebooks/[0-9]*.ipynb
	$(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf runs results .pytest_cache
