# Set-up and entry points. `make test` and `make demo` each install everything they need
# into .venv first (torch/torchvision pinned to the builds available offline here).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo offline-teacher clean

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

# The demo's teacher: the paper's WCT VGG-19. `weights download` fills the weights cache when github is reachable;
# a local copy (../shared on the project's machines) is used offline; without either the demo compresses the
# bundled offline teacher (cdcompress/assets/offline-vgg19, made by `make offline-teacher`).
# Offline is an expected case, not an error: the download's one-line error is shown as one note.
export CDCOMPRESS_WCT_VGG19 ?= $(wildcard $(CURDIR)/../shared/reference/wct-vgg19)

demo: install
	rm -rf runs/demo
	@{ why=$$($(VENV)/bin/cdcompress weights download wct-vgg19 --levels 1-3 2>&1 >&3); } 3>&1 || echo "demo: note: \
	no WCT teacher downloaded ($${why#error: }); the demo uses a local copy if there is one, else the bundled offline teacher"
	$(VENV)/bin/cdcompress demo --out runs/demo

# Rebuild the bundled offline teacher from scratch (about 20 min on 2 CPU cores; model.json records the settings,
# the photos' digests and the held-out PSNR per level).
offline-teacher: install
	$(VENV)/bin/cdcompress train-teacher --out cdcompress/assets/offline-vgg19 --half --run-dir runs/offline_teacher --force

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
