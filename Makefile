# Qwen3-VL-4B-Instruct tutorial. Every target uses the current Python
# (activate your venv / conda env first); nothing here creates a hidden venv.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Offline demo mode: the tiny demo model, no model hub, no outside hosts.
DEMO_ENV := QWEN3VL_MODEL=demo HF_HUB_OFFLINE=1 QWEN3VL_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Notebook 07 needs vLLM (its own environment): `make test-vllm` runs it, `make test` does not.
VLLM_NOTEBOOKS := $(wildcard notebooks/07_*.ipynb)
NOTEBOOKS := $(filter-out $(VLLM_NOTEBOOKS),$(wildcard notebooks/[0-9][0-9]_*.ipynb))
# vLLM pins its own torch, so it lives in its own venv (helpers/vllm_setup.py). Empty: chosen
# there ($$QWEN3VL_VLLM_VENV, else /root/autodl-tmp/venv-vllm on AutoDL, else .venv-vllm).
VLLM_VENV ?=
# auto: the CUDA build when nvidia-smi finds a GPU, else the CPU build (cuda in AutoDL's no-GPU mode).
VLLM_BUILD ?= auto
# auto: the CUDA build the driver runs (cu130 for drivers >= 580, else cu129).
VLLM_CUDA ?= auto
# vLLM reports usage statistics unless told not to; nothing here connects outside the machine.
VLLM_QUIET := VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
BENCH_ARGS ?=
# The notebooks run on a simulated 24 GB RTX 4090 (helpers/simulated_gpu.py): a notebook that would not
# fit a learner's card, or that leaves a model loaded at its end, fails here as it would on AutoDL.
# The registry of what holds the card is this checkout's own.
SIM_GPU := QWEN3VL_SIMULATE_GPU=rtx4090 QWEN3VL_SIMULATE_GPU_DIR=$(CURDIR)/build/simulated-gpu

.PHONY: help setup setup-dev check download demo test serve bench lab lint format clean \
	vllm-setup serve-vllm test-vllm bench-vllm kernel

help:
	@echo "make setup     install requirements.txt (+ torch only if it is missing)"
	@echo "make check     environment check table (python -m helpers.env_check)"
	@echo "make download  download and verify the model (python -m helpers.download)"
	@echo "make demo      run every notebook on the demo model and print a table"
	@echo "make test      pytest over tests/ and nbval over notebooks/ (demo model, offline)"
	@echo "make serve     start the API server (QWEN3VL_MODEL=demo make serve without a GPU)"
	@echo "make bench     measure the server (demo model unless QWEN3VL_MODEL is set; BENCH_ARGS=...)"
	@echo "make vllm-setup  install vLLM into its own venv (VLLM_BUILD=auto|cuda|cpu, VLLM_CUDA=auto|cu130|cu129,"
	@echo "                 VLLM_VENV=dir; default: AutoDL's data disk, else .venv-vllm); run again to check it"
	@echo "make serve-vllm  serve the same model with vLLM, from the same QWEN3VL_* settings"
	@echo "make test-vllm   the client contract + greedy parity against vLLM, and notebook 07"
	@echo "make bench-vllm  the same load on our server and on vLLM: req/s, p50/p99 at 1/4/8/16"
	@echo "make lab       start JupyterLab on 127.0.0.1:8888 (not for AutoDL: use its own JupyterLab)"
	@echo "make kernel    register this Python as the Jupyter kernel \"Python (qwen3vl)\" (for a venv)"
	@echo "make lint      ruff check + ruff format --check"
	@echo "make clean     remove caches, executed notebooks and results"

# torch/torchvision come from your image (AutoDL: PyTorch 2.8) and are never
# replaced. Only when they cannot be imported at all do we install the pair
# that these build machines hold locally.
setup:
	@if $(PYTHON) -c "import torch, torchvision" >/dev/null 2>&1; then \
		$(PYTHON) -c "import torch, torchvision; print(f'torch {torch.__version__} / torchvision {torchvision.__version__} already installed: keeping them')"; \
	else \
		echo "torch/torchvision not importable: installing torch==2.14.1 torchvision==0.29.1"; \
		$(PIP) install torch==2.14.1 torchvision==0.29.1; \
	fi
	@# A JupyterLab that already works (AutoDL's, serving your page) is kept, like torch:
	@# helpers/setup_plan.py leaves its line out unless it is missing or older than 3.0.
	$(PYTHON) -m helpers.setup_plan requirements.txt build/requirements-setup.txt
	$(PIP) install -q -r build/requirements-setup.txt
	$(PIP) install -q --no-deps -e .

# The browser tests (tests/test_webui.py) drive Debian's chromium through Playwright
# (Playwright's own browser download is not reachable from every machine); the
# wqy font makes Chinese readable in their screenshots. Skipped when installed.
setup-dev: setup
	$(PIP) install -q -r requirements-dev.txt
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium already installed: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; \
	else \
		echo "no apt-get: install Chromium and set QWEN3VL_CHROMIUM=/path/to/it for the browser tests"; \
	fi

check:
	$(PYTHON) -m helpers.env_check

download:
	$(PYTHON) -m helpers.download

demo: setup
	$(DEMO_ENV) $(PYTHON) -m helpers.demo_model
	$(DEMO_ENV) $(PYTHON) -m helpers.run_notebooks

# pip runs again only when a requirements file (or pyproject.toml) changed since the last
# successful `make setup-dev` through this stamp; `make clean` removes it.
SETUP_STAMP := build/.setup-dev.stamp
$(SETUP_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(MAKE) setup-dev
	@mkdir -p $(dir $@) && touch $@

# The two halves run side by side (two processes, one torch thread each, so that two cores
# are not oversubscribed): pytest on tests/, and the notebooks (one after another: 05 and 06
# share port 6006's pid file, on the simulated 4090) followed by the web page's main browser
# tests (about as long as what they take off the first half). Its log is printed at the end.
TEST_ENV := $(DEMO_ENV) OMP_NUM_THREADS=1
BROWSER_TESTS := tests/test_webui.py
test: $(SETUP_STAMP)
	@mkdir -p build; \
	( failed=0; \
	  if [ -n "$(NOTEBOOKS)" ]; then \
		$(TEST_ENV) $(SIM_GPU) $(PYTHON) -m pytest --nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider \
			$(NOTEBOOKS) || failed=$$?; \
	  else \
		echo "no notebooks yet: skipping nbval"; \
	  fi; \
	  $(TEST_ENV) $(PYTHON) -m pytest -p no:cacheprovider --durations=10 $(BROWSER_TESTS) || failed=$$?; \
	  exit $$failed ) > build/second-half.log 2>&1 & second=$$!; \
	$(TEST_ENV) $(PYTHON) -m pytest --durations=25 $(addprefix --ignore=,$(BROWSER_TESTS)) tests; tests=$$?; \
	wait $$second; other=$$?; \
	echo "=== notebooks (nbval), then the web page in Chromium ==="; cat build/second-half.log; \
	[ $$tests = 0 ] && [ $$other = 0 ]

serve:
	$(PYTHON) -m helpers.server

bench:
	$(PYTHON) -m helpers.bench $(BENCH_ARGS)

vllm-setup:
	$(VLLM_QUIET) $(PYTHON) -m helpers.vllm_setup $(if $(VLLM_VENV),--venv $(VLLM_VENV)) \
		--build $(VLLM_BUILD) --cuda $(VLLM_CUDA)

serve-vllm:
	$(VLLM_QUIET) QWEN3VL_VLLM_VENV=$(VLLM_VENV) $(PYTHON) -m helpers.vllm_server

# Starts vLLM on the demo checkpoint (tests_vllm/ and notebook 07 each start one, ~2 min on 2 cores).
test-vllm: $(SETUP_STAMP) vllm-setup
	$(DEMO_ENV) $(VLLM_QUIET) QWEN3VL_VLLM_VENV=$(VLLM_VENV) $(PYTHON) -m pytest -p no:cacheprovider tests_vllm
	@if [ -n "$(VLLM_NOTEBOOKS)" ]; then \
		$(DEMO_ENV) $(SIM_GPU) $(VLLM_QUIET) QWEN3VL_VLLM_VENV=$(VLLM_VENV) $(PYTHON) -m pytest --nbval-lax \
			--nbval-cell-timeout=900 -p no:cacheprovider $(VLLM_NOTEBOOKS); \
	fi

bench-vllm: vllm-setup
	$(VLLM_QUIET) QWEN3VL_VLLM_VENV=$(VLLM_VENV) $(PYTHON) -m helpers.bench --compare vllm $(BENCH_ARGS)

# Only reachable from this machine (or through an SSH tunnel). On AutoDL open the
# notebooks in the JupyterLab the instance already runs: port 8888 is not forwarded.
lab:
	$(PYTHON) -m jupyterlab --ip 127.0.0.1 --port 8888 --notebook-dir notebooks

# A venv is not the environment AutoDL's JupyterLab runs kernels in: register it as a
# kernel, then pick "Python (qwen3vl)" in JupyterLab (Kernel -> Change Kernel).
kernel:
	$(PYTHON) -m ipykernel install --user --name qwen3vl --display-name "Python (qwen3vl)"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

clean:
	rm -rf build results .pytest_cache .ruff_cache notebooks/.ipynb_checkpoints
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
