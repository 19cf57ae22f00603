# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch==2.13.0 is the CPU build that lies on these machines; any other spec may pull a multi-GB CUDA build.
PIP     := $(BIN)/pip install -q -c constraints.txt
INDEX   ?= indexes/sample
DEV_INDEX ?= indexes/dev
# modules whose docstring examples are exact (run as doctests); other modules' examples are marked illustrations
# (every docqa module: an example that cannot run as written is marked `# doctest: +SKIP` as an illustration)
DOCTESTS := $(filter-out docqa/__main__.py,$(wildcard docqa/*.py docqa/*/*.py))
# Debian packages some tests need: the browser the web-UI tests drive (Playwright's own download is not
# reachable), .doc converters, a CJK font to render OCR test pages. Installed when run as root; elsewhere those
# tests skip and say which package is missing.
APT_PKGS := chromium antiword catdoc fonts-wqy-microhei
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint format system-deps test-slow fuzz eval bench venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/docqa ingest corpora/sample --index $(INDEX)
	$(BIN)/docqa search "How do I create a virtual environment?" --index $(INDEX) -k 3
	$(BIN)/docqa ask "How do I create a virtual environment in Python?" --index $(INDEX)

# two workers (pytest-xdist), a test file per worker: many tests wait on child processes and servers, so two
# workers on two cores take about half the time of one; more would multiply the models held in memory
TEST_WORKERS ?= 2

test: venv lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --doctest-modules tests $(DOCTESTS)

system-deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	  || echo "could not install $$missing: the tests that need them will skip"; \
	else echo "not root: tests needing $$missing will skip (sudo apt-get install $$missing)"; fi

lint: venv  # ruff: the formatter's layout and the linter's checks (pyproject.toml [tool.ruff])
	$(BIN)/ruff check docqa tests benchmarks
	$(BIN)/ruff format --check docqa tests benchmarks

format: venv
	$(BIN)/ruff check --fix docqa tests benchmarks
	$(BIN)/ruff format docqa tests benchmarks

test-slow: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

fuzz: venv  # a long fuzz run of every loader; findings land in tests/regressions/ (FUZZ_EXAMPLES per loader)
	DOCQA_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-20000} $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

eval: venv  # the dev set's documents are corpora/sample + corpora/dev; both halves are reported
	$(BIN)/docqa ingest corpora/sample corpora/dev --index $(DEV_INDEX)
	$(BIN)/docqa eval corpora/dev_qa.jsonl --index $(DEV_INDEX) --mode dense,bm25,hybrid
	$(BIN)/docqa eval corpora/dev_qa.jsonl --index $(DEV_INDEX) --answers --llm extractive

bench: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) indexes/sample indexes/dev
