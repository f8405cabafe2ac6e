# agentd: the two commands a user runs (see README.md). Both are idempotent and run as root.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test setup-vm demo test install clean

setup:
	bash scripts/setup.sh

setup-test:
	EXTRAS=test,torch bash scripts/setup.sh

setup-vm: setup-test
	bash scripts/vm-setup.sh

# The main job: the daemon with its embedded default policy on the bundled demo workload.
demo: setup
	$(VENV)/bin/agentd demo

# The whole suite: unit, kernel (real BPF, cgroups), e2e, then the VM tests (pure cgroup v2).
test: setup-vm
	$(PY) -m pytest -q -p no:cacheprovider tests

install: setup
	$(VENV)/bin/agentctl install-service

clean:
	rm -rf $(VENV) .vm
