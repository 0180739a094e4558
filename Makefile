# Two commands from a fresh clone: `make test` and `make figures` (both do the set-up first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test figures notebooks bench lab clean

setup: $(STAMP)

# The venv is created if missing; pinned dependencies (requirements.txt, torch==2.13.0 CPU build) then
# the project itself, editable. Re-runs when the pins or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The tests run in one pytest-xdist worker per core (at most 8; tests/conftest.py gives each worker's torch its
# share of the cores): about half the time of one process on 2 cores. `make test PYTEST_WORKERS=0` runs them in
# this process; a plain `pytest` runs them in one process too.
PYTEST_WORKERS ?= logical
test: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) --maxprocesses=8 --dist worksteal

# The default run (results/), then the other runs the README shows: the seed's experiment, a ResNet-18 and a
# U-Net on the same photos, the stack with free-form holes in every image, and the training experiment on images
# and with the byte language model on the standard library's functions.
figures: setup
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py --out results
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py --out results/seed --preset seed --quiet
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py --out results/resnet18 --model resnet18 --quiet
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py --out results/unet --model unet --quiet
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py --out results/holes --mask holes --quiet
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py train --out results/train --fresh --quiet
	MPLBACKEND=Agg $(PY) visualize_activations_2d.py train --data stdlib --out results/train_lm --fresh --quiet --dpi 100

# Re-run both notebooks and save them with their (small) outputs, e.g. after make figures.
notebooks: setup
	$(PY) notebooks/refresh.py

bench: setup
	$(PY) benchmarks/layers.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/recorder.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/streaming.py

# JupyterLab (pinned in requirements.txt) on the notebooks; more flags: make lab LAB_ARGS="--no-browser --port 8890".
# Jupyter refuses to run as root unless told: as root (a container), --allow-root is added.
lab: setup
	$(PY) -m jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
