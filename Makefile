# Set-up and entry points. `make test` and `make demo` each install everything they need
# into .venv first (torch/torchvision pinned to the builds available offline here).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --retries 10 $(TORCH_PINS)
	$(PY) -m pip install -q --retries 10 -e '.[dev]' $(TORCH_PINS)
	touch $@

lint: install
	$(VENV)/bin/ruff check cdcompress tests benchmarks examples

test: lint
	$(VENV)/bin/pytest

demo: install
	rm -rf runs/demo
	$(VENV)/bin/cdcompress distill --recipe demo --out runs/demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
