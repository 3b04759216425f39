# medq-bench: every target installs what it needs first (through the stamp file).
#
#   make train-v3 && make eval     the main job: data -> shipped VAE + base model (weights/, checked
#                                  by make check-weights)
#                                  -> SSIM v3 fine-tune, then pixel / v3 / mixed + baselines scored
#                                  into reports/
#   make weights                   rebuild weights/ (VAE + long base run) from scratch (hours on a CPU)
#   make eval SEEDS=3              every standard mode trained and scored with 3 training seeds
#   make eval-drive                those runs on the held-out development photographs at 512 px
#   make test                      the test suite (what CI runs, after make lint)
#   make test-fast                 the tests that neither train nor serve (< 1 min)
#   make lint                      ruff (configured in pyproject.toml)
#   make demo                      the clinicians' page on http://127.0.0.1:7860
#
# Real data:  make eval DATA=eyeq EYEQ_ROOT=/data/EyeQ/original_img LABELS=/data/EyeQ/Label_EyeQ_test.csv
#             make eval DATA=folder ROOT=/data/my_fundus_pngs

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
SET ?=
# Training seeds per standard mode for `make eval` (SEEDS=3: per-seed rows, mean +- seed std).
SEEDS ?= 1
DATA ?= synthetic
EYEQ_ROOT ?=
LABELS ?=
ROOT ?=

ifeq ($(DATA),eyeq)
EVAL_DATA := --data eyeq --eyeq-root "$(EYEQ_ROOT)" --labels "$(LABELS)" --split all
else ifeq ($(DATA),folder)
EVAL_DATA := --data folder --root "$(ROOT)" --split all
else
EVAL_DATA :=
endif

.PHONY: install test test-fast lint data check-weights base vae weights train-v3 train-pixel train-mixed train-all eval eval-drive demo \
        bench-ssim bench-data bench-train study study-plan clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# Every test that trains, serves or runs a whole evaluation is marked slow; the rest takes under
# a minute on the 2-core CPU.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

data: $(STAMP)
	$(PY) -m train data

# The VAE and the base model are shipped in weights/ (a base trained far longer than the main job's
# budget allows, as the original fine-tuned a fully pretrained BAGEL); `check-weights` verifies them
# (sha256, strict load, recorded scores) instead of training them. `weights` rebuilds both from
# scratch (the `pretrain` preset trains the base model).
check-weights: data
	$(PY) -m train weights --check

# The main job checks the weights once, then again only when they, the model code or the install
# change (the check recomputes the recorded scores and report kappa, which takes a while).
WEIGHTS_OK := runs/.weights-checked
$(WEIGHTS_OK): $(STAMP) $(wildcard weights/*/*) $(wildcard medq/models/*.py medq/harness/*.py)
	$(MAKE) --no-print-directory check-weights
	mkdir -p runs && touch $@

# Old names of check-weights ("base" now means only the base model, weights/base).
base vae: check-weights
	@echo "note: make $@ is now called make check-weights"

weights: $(STAMP)
	$(PY) -m train weights

train-v3: $(WEIGHTS_OK)
	$(PY) -m train --preset ssim_v3 $(SET)

train-pixel: $(WEIGHTS_OK)
	$(PY) -m train --preset pixel $(SET)

train-mixed: $(WEIGHTS_OK)
	$(PY) -m train --preset mixed $(SET)

train-all: $(WEIGHTS_OK)
	for p in pixel ssim_v3 mixed ssim_v3_relaxed ssim_v1; do $(PY) -m train --preset $$p $(SET) || exit 1; done

eval: $(WEIGHTS_OK)
	$(PY) -m bench eval --seeds $(SEEDS) $(EVAL_DATA) $(SET)

# The development photographs' held-out test ids (configs/splits/drive_development.toml: never
# trained or tuned on), at a working size a clinician reads (DRIVE_SIZE=0: each photograph's own
# size). The fine-tunes of `make eval` are scored as they are (--skip-train). The demo's Results
# tab reads reports-drive (its --real-reports).
DRIVE_ROOT ?= ../shared/fundus-samples/drive-train
DRIVE_SIZE ?= 512
DRIVE_OUT ?= reports-drive
# Where the one-step output reads the model on photographs, chosen on the development set's val ids
# (31-34), never on the test ids scored here: python -m bench onestep-t --split val --images 4
#   --t 1,0.95,0.9,0.7 --set data.source=drive --set data.root=$(DRIVE_ROOT)
#   --set data.split_file=configs/splits/drive_development.toml --set data.image_size=512
# (the synthetic val split chose sample.onestep_t's default).
DRIVE_ONESTEP_T ?= 0.95
eval-drive: $(WEIGHTS_OK)
	$(PY) -m bench eval --skip-train --data drive --root "$(DRIVE_ROOT)" --split test \
	  --set data.split_file=configs/splits/drive_development.toml \
	  --set data.image_size=$(DRIVE_SIZE) --set sample.onestep_t=$(DRIVE_ONESTEP_T) \
	  --out $(DRIVE_OUT) $(SET)

demo: $(STAMP)
	$(PY) -m demo

bench-ssim: $(STAMP)
	$(PY) -m bench perf ssim

bench-data: $(STAMP)
	$(PY) -m bench perf data

bench-train: $(WEIGHTS_OK)
	$(PY) -m bench perf train

# The SSIM-vs-pixel study (issue 28): hours on the 2-core CPU, never part of CI. Resumable: run
# it again after a stop. STUDY="--quick" is the one-hour version; study-plan prints the jobs and
# the estimated hours without running anything.
STUDY ?=
study: $(WEIGHTS_OK)
	$(PY) -m bench study $(STUDY) $(SET)

study-plan: $(WEIGHTS_OK)
	$(PY) -m bench study --plan $(STUDY) $(SET)

clean:
	rm -rf runs reports
