# Expotion — one target per stage, each a subcommand of `expotion` (src/expotion/cli/main.py).
# Every target installs what it needs first.
SHELL := /bin/bash
# The interpreter that creates .venv: Python 3.11 (pyproject.toml's requires-python). The variables users set are
# listed, with their defaults, in docs/makefile.md.
PYTHON ?= python3
PYTHON_VERSION := 3.11
VENV := .venv
PY := $(VENV)/bin/python
# The install is keyed on the content of the requirement files, not on file times: the stamp
# holds their hash, so a fresh clone beside an installed .venv does not reinstall.
REQUIREMENTS := $(sort $(wildcard requirements/*.txt)) pyproject.toml
REQUIREMENTS_HASH := $(shell sha256sum $(REQUIREMENTS) | sha256sum | cut -c1-16)
EXPOTION := $(PY) -m expotion.cli.main
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1
export NO_MKDOCS_2_WARNING := 1

# Feature stage defaults: the offline demo. Real data: make features MANIFEST=... CACHE=... PROFILE=real
DEMO_DIR ?= demo_data
MANIFEST ?= $(DEMO_DIR)/manifest.csv
CACHE ?= cache/demo
PROFILE ?= tiny
WORKERS ?= 2
EXTRACTORS ?= marlin,synchformer,raft,codes,t5
TINY_DIR ?= cache/tiny-weights
DEVICE ?=
FEATURE_ARGS ?=
# Training: one or more LightningCLI configs (later ones override), plus CLI overrides.
# A run writes everything under its trainer.default_root_dir (tiny_cpu.yaml: runs/tiny_cpu).
CONFIG ?= lightning_configs/tiny_cpu.yaml
ARGS ?=
LOGDIR ?= runs
DEMO_RUN := runs/tiny_cpu
DEMO_CACHE := cache/demo
DEMO_CHECKPOINT := $(DEMO_RUN)/adaptor.pt
DEMO_RESULTS := results/demo
# The control that shows the video matters: the demo run again, on zeroed video features.
DEMO_CONTROL_RUN := runs/tiny_cpu_zero_visual
DEMO_TRAIN_ARGS := --trainer.enable_progress_bar=false

.PHONY: install check-python demo demo-control demo-clip-flow demo-data tiny-weights features captions train generate eval table1 tensorboard app browser-deps docs test test-all clean-cache

install: check-python $(STAMP)

# The venv's interpreter when there is one, else the one that would create it: refused, naming the one to use,
# before anything is installed.
check-python:
	@py=$(if $(wildcard $(PY)),$(PY),$(PYTHON)); \
	v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
		echo "make install: no Python interpreter '$$py'; Expotion needs Python $(PYTHON_VERSION): install it and run make again with PYTHON=python$(PYTHON_VERSION)" >&2; exit 2; }; \
	[ "$$v" = "$(PYTHON_VERSION)" ] || { \
		echo "make install: $$py is Python $$v; Expotion needs Python $(PYTHON_VERSION): run make again with PYTHON=python$(PYTHON_VERSION)$(if $(wildcard $(PY)), after removing $(VENV) (made by Python $$v))" >&2; exit 2; }

ifneq ($(shell cat $(STAMP) 2>/dev/null),$(REQUIREMENTS_HASH))
.PHONY: $(STAMP)
endif
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/precompute.txt \
		-r requirements/eval.txt -r requirements/app.txt -r requirements/test.txt -r requirements/docs.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	echo $(REQUIREMENTS_HASH) > $(STAMP)

demo-data: install
	$(PY) -m expotion.demo.synth $(DEMO_DIR)

# Small random models in the released formats, written once (the tiny profile and eval tests read them).
tiny-weights: install
	$(EXPOTION) weights make-tiny $(TINY_DIR)

demo: demo-data tiny-weights
	$(MAKE) --no-print-directory features
	@echo "demo features written to $(CACHE); inspect with: $(EXPOTION) cache inspect $(CACHE)"
	$(MAKE) --no-print-directory train CONFIG=lightning_configs/tiny_cpu.yaml \
		ARGS="$(DEMO_TRAIN_ARGS) --trainer.default_root_dir=$(DEMO_RUN)"
	$(PY) -m expotion.demo.showcase --manifest $(MANIFEST) --checkpoint $(DEMO_CHECKPOINT) --control-run $(DEMO_CONTROL_RUN)

# The zeroed-video control of the demo run (--model.zero_visual=true), then the demo's comparison again with its loss.
# Apart from `make demo` because it doubles the demo's training time.
demo-control: demo
	$(MAKE) --no-print-directory train CONFIG=lightning_configs/tiny_cpu.yaml \
		ARGS="$(DEMO_TRAIN_ARGS) --trainer.default_root_dir=$(DEMO_CONTROL_RUN) --model.zero_visual=true"
	$(PY) -m expotion.demo.showcase --manifest $(MANIFEST) --checkpoint $(DEMO_CHECKPOINT) --control-run $(DEMO_CONTROL_RUN)

# The second method (CLIP + flow) on the demo data with tiny models: its features, training, generation for the
# validation clips and their evaluation (beside Expotion's demo run when `make demo` made one).
CLIP_FLOW_CACHE ?= cache/demo-clip-flow
CLIP_FLOW_RUN := runs/clip_flow_tiny
demo-clip-flow: demo-data tiny-weights
	$(MAKE) --no-print-directory features CACHE=$(CLIP_FLOW_CACHE) EXTRACTORS=clip,farneback,codes,t5
	$(MAKE) --no-print-directory train CONFIG=lightning_configs/clip_flow_tiny.yaml \
		ARGS="--trainer.enable_progress_bar=false --trainer.default_root_dir=$(CLIP_FLOW_RUN)"
	$(EXPOTION) generate --cache $(CLIP_FLOW_CACHE)/val --out-dir outputs/clip-flow \
		--checkpoint $(CLIP_FLOW_RUN)/clip_flow.pt --reference-dir outputs/reference
	$(if $(wildcard $(DEMO_RUN)/adaptor.pt),$(EXPOTION) generate --cache $(CACHE)/val --out-dir outputs/expotion \
		--checkpoint $(DEMO_RUN)/adaptor.pt,)
	$(EXPOTION) eval --generated outputs/clip-flow $(if $(wildcard $(DEMO_RUN)/adaptor.pt),outputs/expotion) \
		--reference outputs/reference --cache $(CLIP_FLOW_CACHE)/val --weights-dir $(TINY_DIR) \
		--out results/demo-clip-flow --workers $(WORKERS)

features: install
	$(if $(filter $(MANIFEST),$(DEMO_DIR)/manifest.csv),test -f $(MANIFEST) || $(PY) -m expotion.demo.synth $(DEMO_DIR),)
	$(EXPOTION) features --manifest $(MANIFEST) --cache $(CACHE) --profile $(PROFILE) --tiny-dir $(TINY_DIR) \
		--workers $(WORKERS) --extractors $(EXTRACTORS) $(if $(DEVICE),--device $(DEVICE)) $(FEATURE_ARGS)

# Generated captions for every clip of CACHE (music, scene, flamingo or fused), stored with the clips; a rerun
# captions only what is missing or was made otherwise. The demo reads the tiny stand-ins in TINY_DIR; real models: WEIGHTS_DIR=weights.
CAPTIONER ?= music
WEIGHTS_DIR ?= $(TINY_DIR)
CAPTION_ARGS ?=
captions: install
	$(EXPOTION) caption --cache $(CACHE) --captioner $(CAPTIONER) --weights-dir $(WEIGHTS_DIR) \
		$(if $(DEVICE),--device $(DEVICE)) $(CAPTION_ARGS)

train: install
	$(EXPOTION) train fit $(foreach c,$(CONFIG),--config $(c)) $(ARGS)

# Batch generation for a cached split (the checkpoint names its MusicGen and extractor profile). The demo checkpoint
# is the default only on the demo's cache: another cache needs CHECKPOINT=runs/.../adaptor.pt (empty: plain MusicGen).
SPLIT ?= $(CACHE)/val
OUT_DIR ?= outputs/generated
CHECKPOINT ?= $(DEMO_CHECKPOINT)
GEN_ARGS ?= --reference-dir outputs/reference
ON_DEMO_CACHE = $(filter $(DEMO_CACHE)/%,$(SPLIT))
GENERATE_REFUSAL = make generate: SPLIT=$(SPLIT) is not the demo's cache, but CHECKPOINT is the demo's \
	($(DEMO_CHECKPOINT)); name the adaptor trained for it: make generate SPLIT=$(SPLIT) CHECKPOINT=runs/NAME/adaptor.pt \
	(or CHECKPOINT= for plain MusicGen)
generate: install
	@$(if $(and $(if $(ON_DEMO_CACHE),,other),$(filter $(DEMO_CHECKPOINT),$(CHECKPOINT))),\
		echo "$(GENERATE_REFUSAL)" >&2; exit 2,:)
	$(EXPOTION) generate --cache $(SPLIT) --out-dir $(OUT_DIR) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(GEN_ARGS)

# Table 1 metrics: generated vs reference audio, paired by clip id.
GENERATED ?= $(OUT_DIR)
REFERENCE ?= outputs/reference
RESULTS ?= $(DEMO_RESULTS)
EVAL_ARGS ?=
EVAL_REFUSAL = make eval: GENERATED=$(GENERATED) SPLIT=$(SPLIT) are not the demo's, but RESULTS is the demo's folder \
	($(DEMO_RESULTS)); name this evaluation's own folder: make eval GENERATED=$(GENERATED) RESULTS=results/NAME
eval: install
	@$(if $(and $(filter $(DEMO_RESULTS),$(RESULTS)),$(if $(and $(ON_DEMO_CACHE),$(filter outputs/generated,$(GENERATED))),,other)),\
		echo "$(EVAL_REFUSAL)" >&2; exit 2,:)
	$(EXPOTION) eval --generated $(GENERATED) --reference $(REFERENCE) --out $(RESULTS) --workers $(WORKERS) $(EVAL_ARGS)

# The paper's Table 1 from one experiment file (docs/experiments.md): every row trained (or reused), generated and
# evaluated, then table1.md, .csv, .png and .provenance.json in TABLE1_OUT. A rerun redoes only what changed.
# The default runs every row on the demo data with the tiny models; the real rows: EXPERIMENT=.../table1.yaml.
EXPERIMENT ?= lightning_configs/experiments/table1_tiny.yaml
TABLE1_OUT ?= results/$(basename $(notdir $(EXPERIMENT)))
EXPERIMENT_ARGS ?=
TABLE1_ON_DEMO = $(filter lightning_configs/experiments/table1_tiny.yaml,$(EXPERIMENT))
table1: install
	$(if $(TABLE1_ON_DEMO),test -f $(DEMO_DIR)/manifest.csv || $(PY) -m expotion.demo.synth $(DEMO_DIR),)
	$(if $(TABLE1_ON_DEMO),$(EXPOTION) weights make-tiny $(TINY_DIR),)
	$(EXPOTION) experiment run $(EXPERIMENT) --out $(TABLE1_OUT) $(EXPERIMENT_ARGS)

tensorboard: install
	$(PY) -m tensorboard.main --logdir $(LOGDIR)

# The browser app on the demo checkpoint and tiny models (after `make demo`); STUDY=study.yaml adds the study tab.
APP_ARGS ?= --profile tiny --musicgen cache/tiny-weights/musicgen_tiny --tiny-dir cache/tiny-weights
STUDY ?=
app: install
	@test -f cache/tiny-weights/musicgen_tiny/state_dict.bin || { echo "no demo models yet: run 'make demo' first"; exit 1; }
	$(EXPOTION) app $(APP_ARGS) $(if $(STUDY),--study $(STUDY))

# Debian's chromium and chromedriver for the browser tests, and ffmpeg, which Gradio needs to stream the Live tab's music (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v ffmpeg >/dev/null; then :; else \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver ffmpeg; fi

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or anchor, a page missing from the
# nav or an API-reference entry that no longer resolves is an error.
docs: install
	$(VENV)/bin/mkdocs build --strict

# The documentation (a prerequisite), the import contract (pyproject.toml's [tool.importlinter]), then the tests.
test: install browser-deps docs
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -x -q

test-all: install browser-deps docs
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -x -q -m ""

clean-cache:
	rm -rf $(CACHE)
