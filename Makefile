# Expotion — one target per stage, each a subcommand of `expotion` (src/expotion/cli.py).
# Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The install is keyed on the content of the requirement files, not on file times: the stamp
# holds their hash, so a fresh clone beside an installed .venv does not reinstall.
REQUIREMENTS := $(sort $(wildcard requirements/*.txt)) pyproject.toml
REQUIREMENTS_HASH := $(shell sha256sum $(REQUIREMENTS) | sha256sum | cut -c1-16)
EXPOTION := $(PY) -m expotion.cli
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

.PHONY: install demo demo-clip-flow demo-data tiny-weights features train generate eval tensorboard app browser-deps docs test test-all clean-cache

install: $(STAMP)

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
		ARGS="--trainer.enable_progress_bar=false --trainer.default_root_dir=$(DEMO_RUN)"
	$(PY) -m expotion.demo.showcase --manifest $(MANIFEST) --checkpoint $(DEMO_RUN)/adaptor.pt

# The second method (CLIP + flow) on the demo data with tiny models: its features, training, generation for the
# validation clips and their evaluation (beside Expotion's demo run when `make demo` made one).
CLIP_FLOW_CACHE ?= cache/demo-clip-flow
CLIP_FLOW_RUN := runs/clip_flow_tiny
demo-clip-flow: demo-data tiny-weights
	$(MAKE) --no-print-directory features CACHE=$(CLIP_FLOW_CACHE) EXTRACTORS=clip,farneback,codes,t5
	$(MAKE) --no-print-directory train CONFIG=lightning_configs/clip_flow_tiny.yaml \
		ARGS="--trainer.enable_progress_bar=false --trainer.default_root_dir=$(CLIP_FLOW_RUN)"
	$(EXPOTION) generate --cache $(CLIP_FLOW_CACHE)/val --out-dir outputs/clip-flow \
		--checkpoint $(CLIP_FLOW_RUN)/adaptor.pt --reference-dir outputs/reference
	$(if $(wildcard $(DEMO_RUN)/adaptor.pt),$(EXPOTION) generate --cache $(CACHE)/val --out-dir outputs/expotion \
		--checkpoint $(DEMO_RUN)/adaptor.pt,)
	$(EXPOTION) eval --generated outputs/clip-flow $(if $(wildcard $(DEMO_RUN)/adaptor.pt),outputs/expotion) \
		--reference outputs/reference --cache $(CLIP_FLOW_CACHE)/val --weights-dir $(TINY_DIR) \
		--out results/demo-clip-flow

features: install
	$(if $(filter $(MANIFEST),$(DEMO_DIR)/manifest.csv),test -f $(MANIFEST) || $(PY) -m expotion.demo.synth $(DEMO_DIR),)
	$(EXPOTION) features --manifest $(MANIFEST) --cache $(CACHE) --profile $(PROFILE) --tiny-dir $(TINY_DIR) \
		--workers $(WORKERS) --extractors $(EXTRACTORS) $(if $(DEVICE),--device $(DEVICE)) $(FEATURE_ARGS)

train: install
	$(EXPOTION) train fit $(foreach c,$(CONFIG),--config $(c)) $(ARGS)

# Batch generation for a cached split (the checkpoint names its MusicGen and extractor profile)
SPLIT ?= $(CACHE)/val
OUT_DIR ?= outputs/generated
GEN_ARGS ?= --checkpoint $(DEMO_RUN)/adaptor.pt --reference-dir outputs/reference
generate: install
	$(EXPOTION) generate --cache $(SPLIT) --out-dir $(OUT_DIR) $(GEN_ARGS)

# Table 1 metrics: generated vs reference audio, paired by clip id.
GENERATED ?= $(OUT_DIR)
REFERENCE ?= outputs/reference
RESULTS ?= results/demo
EVAL_ARGS ?=
eval: install
	$(EXPOTION) eval --generated $(GENERATED) --reference $(REFERENCE) --out $(RESULTS) $(EVAL_ARGS)

tensorboard: install
	$(PY) -m tensorboard.main --logdir $(LOGDIR)

# The browser app on the demo checkpoint and tiny models (after `make demo`); STUDY=study.yaml adds the study tab.
APP_ARGS ?= --profile tiny --musicgen cache/tiny-weights/musicgen_tiny --tiny-dir cache/tiny-weights
STUDY ?=
app: install
	@test -f cache/tiny-weights/musicgen_tiny/state_dict.bin || { echo "no demo models yet: run 'make demo' first"; exit 1; }
	$(EXPOTION) app $(APP_ARGS) $(if $(STUDY),--study $(STUDY))

# Debian's chromium and chromedriver for the browser test (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; fi

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
