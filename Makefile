# Two entry points: `make demo` runs the main job on the shipped example, `make test` runs the suite.
# Both create the virtual environment in .venv first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# faiss-gpu on machines with an NVIDIA driver, faiss-cpu elsewhere (never both: same module).
FAISS_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# The CPU build of torch; set TORCH_SPEC=torch to let pip choose (CUDA builds on GPU machines).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(FAISS_EXTRA),server,test]"
	# An initialised Label Studio data dir inside the venv, copied by every new workspace (seconds, not a minute).
	$(BIN)/prefscout labelstudio template
	touch $@

demo: venv
	$(BIN)/prefscout demo

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) prefscout-workspace .pytest_cache
