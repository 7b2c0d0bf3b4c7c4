# nanogpt-course: every command of the course. `make` (or `make help`) lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# The exact CPU build this course is tested with. Installed only when no torch is present,
# so an existing (e.g. CUDA) build is never replaced. Override: make setup TORCH_SPEC='torch==2.11.0'
TORCH_SPEC ?= torch==2.13.0
# Which optional extras `make setup` installs (dev = tests + notebook tooling).
EXTRAS ?= dev,data,server
# make ddp-train variables (README, "Training"). Several nodes: set NNODES, NODE_RANK and
# MASTER_ADDR (torchrun's c10d rendezvous) on every node; one node runs --standalone.
NGPUS ?= 1
MODE ?= pretraining
DEPTH ?= 12
CORE_EVERY ?= 2000
CHATCORE_EVERY ?= 1000
NNODES ?= 1
RDZV = $(if $(filter 1,$(NNODES)),--standalone,--nnodes=$(NNODES) --node_rank=$(NODE_RANK) \
       --rdzv_backend=c10d --rdzv_endpoint=$(MASTER_ADDR):29500)
truthy = $(filter 1 true yes on,$(1))
# make lesson: which lesson (N=01) at which preset; the executed copy goes to RUNS/lessons/.
N ?=
PRESET ?= laptop
RUNS ?= $(or $(NANOGPT_COURSE_RUNS),runs)
# make run-scaling-law: where the sweep's CSV goes (fit and plots land beside it)
SCALING_RESULTS = $(or $(RESULTS),runs/scaling/sweep.csv)

.PHONY: help setup test test-fast lab lesson sync lint format env gpu-status kill-gpu \
        quickstart ddp-train chat-server chat run-scaling-law clean

help: ## list every target
	@echo "nanogpt-course: make <target>"
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

setup: ## create .venv, install torch (CPU, only if none) and the package with its extras
	@bash scripts/setup.sh "$(VENV)" "$(TORCH_SPEC)" "$(EXTRAS)"

env: setup ## check the environment (Python, torch, device, data, kernel)
	@$(PY) -m nanogpt_course.env

test: setup ## run every test and execute every lesson at PRESET=smoke (what CI runs)
	@bash scripts/run_tests.sh "$(PY)"

test-fast: setup ## unit tests only (no notebooks, no slow tests)
	@$(PY) -m pytest tests -m "not slow and not notebook" -q

lab: setup ## open JupyterLab on the lessons
	@$(PY) -m jupyter lab --notebook-dir=. lessons/00_setup.ipynb $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

lesson: ## run one lesson headless at a preset: make lesson N=01 [PRESET=smoke|laptop|full]
	@f=$$(ls lessons/$(N)_*.ipynb 2>/dev/null | head -n 1); \
	if [ -z "$(N)" ] || [ -z "$$f" ]; then \
	  echo "error: no lesson N='$(N)': pass its number, e.g. make lesson N=01 (lessons: $$(ls lessons/*.ipynb | sed 's|lessons/||; s|_.*||' | tr '\n' ' '))" >&2; exit 2; fi; \
	$(PY) -c "import papermill" 2>/dev/null || bash scripts/setup.sh "$(VENV)" "$(TORCH_SPEC)" "$(EXTRAS)"; \
	mkdir -p "$(RUNS)/lessons" && out="$(RUNS)/lessons/$$(basename $$f)"; \
	echo "running $$f at PRESET=$(PRESET) -> $$out"; \
	$(PY) -m papermill "$$f" "$$out" -p PRESET $(PRESET) -k python3 --cwd lessons --log-output --no-progress-bar

sync: setup ## pair lessons/*.py (source of truth) with their .ipynb (jupytext --sync)
	@$(PY) -m jupytext --sync lessons/[0-9][0-9]_*.py

lint: setup ## ruff check
	@$(PY) -m ruff check .

format: setup ## ruff format, then re-sync the notebooks
	@$(PY) -m ruff format nanogpt_course tests bench scripts solutions
	@$(PY) -m ruff check --fix nanogpt_course tests bench scripts solutions
	@$(PY) -m jupytext --sync lessons/[0-9][0-9]_*.py

gpu-status: ## show GPUs, their memory and the processes on them
	@bash scripts/gpu.sh status

kill-gpu: ## end GPU processes of the current user (listed first); never other users'
	@bash scripts/gpu.sh kill

quickstart: ## train a tiny GPT on the CPU in minutes: samples + runs/quickstart/loss.png (ARGS="--fresh" retrains)
	@bash scripts/setup.sh "$(VENV)" "$(TORCH_SPEC)" ""
	@$(PY) scripts/quickstart.py $(ARGS)

ddp-train: setup ## torchrun on NGPUS GPUs: MODE DEPTH DATA TARGET_FLOPS MAX_STEPS CHECKPOINT RESUME CORE_EVALS CHATCORE_EVALS WINDOW_PATTERN SHORT_WINDOW FP8 OUT ARGS
	$(PY) -m torch.distributed.run $(RDZV) --nproc_per_node=$(NGPUS) -m nanogpt_course.train \
	  --mode $(MODE) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),--depth $(DEPTH)) \
	  $(if $(DATA),--data $(DATA)) $(if $(TARGET_FLOPS),--target-flops $(TARGET_FLOPS)) \
	  $(if $(MAX_STEPS),--max-steps $(MAX_STEPS)) $(if $(call truthy,$(RESUME)),--resume) \
	  $(if $(call truthy,$(CORE_EVALS)),--core-every $(CORE_EVERY)) \
	  $(if $(call truthy,$(CHATCORE_EVALS)),--chatcore-every $(CHATCORE_EVERY)) \
	  $(if $(WINDOW_PATTERN),--window-pattern $(WINDOW_PATTERN)) \
	  $(if $(SHORT_WINDOW),--short-window $(SHORT_WINDOW)) $(if $(call truthy,$(FP8)),--fp8) \
	  $(if $(OUT),--out $(OUT)) $(ARGS)

chat-server: ## web chat on http://localhost:8003: CHECKPOINT (default: the shipped chat model) PORT HOST ARGS
	$(PY) -m nanogpt_course.chat.server $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	  --port $(or $(PORT),8003) $(if $(HOST),--host $(HOST)) $(ARGS)

chat: ## chat in the terminal: CHECKPOINT (default: the shipped chat model) ARGS (e.g. --temperature 0.5)
	$(PY) -m nanogpt_course.chat $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(ARGS)

run-scaling-law: setup ## depth x FLOPs sweep, then isoFLOP fit + plots (CPU: tiny, minutes; CUDA: the seed's). SWEEP DEPTHS BUDGETS DATA NPROC RESULTS ARGS
	$(PY) -m nanogpt_course.scaling_laws sweep $(if $(SWEEP),--preset $(SWEEP)) \
	  $(if $(DEPTHS),--depths $(DEPTHS)) $(if $(BUDGETS),--budgets $(BUDGETS)) \
	  $(if $(DATA),--data $(DATA)) --nproc $(or $(NPROC),1) --results $(SCALING_RESULTS) $(ARGS)
	$(PY) -m nanogpt_course.scaling_laws fit --results $(SCALING_RESULTS) --out $(dir $(SCALING_RESULTS))

clean: ## remove caches made by the tests (keeps .venv and runs/)
	rm -rf .test-cache .pytest_cache .ruff_cache
