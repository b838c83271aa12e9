# hvsim — set up, run the demo, test, benchmark. `make run` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup run test bench fuzz qemu clean

$(STAMP): pyproject.toml setup.py hypervisor/machine/native/blockhook.c hypervisor/machine/native/readguard.c hypervisor/machine/native/tlbfill.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) qemu

# The bare-machine referee for the conformance tests (Debian's qemu-system-x86).
qemu:
	@command -v qemu-system-i386 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq qemu-system-x86 >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq qemu-system-x86 >/dev/null; fi; } \
	  || echo "warning: qemu-system-i386 not installed; QEMU conformance tests will be skipped"

# The demo: the Popek-Goldberg guest on the bare machine and under trap-and-emulate, side by side.
run: $(STAMP)
	$(BIN)/hv run guests/hello.S --technique trap
	$(BIN)/hv compare guests/sensitive.S
	$(BIN)/hv compare guests/timer.S

test: setup
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Random instruction streams under native and trap, in worker processes (both cores): no VMM
# exception, abort, hang or run past its budget. Replay a failure with
# `$(BIN)/python -m hypervisor.fuzz --replay SEED:INDEX --technique T`.
FUZZ_COUNT ?= 10000
FUZZ_SEED ?= 1
fuzz: $(STAMP)
	$(BIN)/python -m hypervisor.fuzz --count $(FUZZ_COUNT) --seed $(FUZZ_SEED) --workers 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info hypervisor/machine/native/*.so
