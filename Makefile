# `make demo` and `make test` set everything up from a fresh machine.
# TORCH_SPEC pins the PyTorch build; override it for a CUDA machine, e.g. make test TORCH_SPEC="torch==2.5.1".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= out

.PHONY: install demo test test-fast clean

$(BIN)/geoproto: pyproject.toml setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/geoproto

demo: install
	mkdir -p $(OUT)
	$(BIN)/geoproto segment examples/spacenet/sample_geotiff.tif \
		--support examples/spacenet/support.gpkg \
		--output $(OUT)/spacenet-classes.tif --preview $(OUT)/spacenet-preview.png \
		--vector $(OUT)/spacenet-classes.gpkg --report $(OUT)/spacenet-areas.csv --overwrite --json
	@echo "Class raster: $(OUT)/spacenet-classes.tif  preview: $(OUT)/spacenet-preview.png" >&2

# The whole suite; test-fast skips the end-to-end runs of the encoder on real imagery (marked slow).
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
