# agentd: the README's two commands are ./scripts/run demo|test (bash only); make is a
# convenience on top. Everything is idempotent and runs as root.
VENV ?= .venv

.PHONY: setup demo test install clean

setup:
	bash scripts/setup.sh

# The main job: the daemon with its embedded default policy on the bundled demo workload.
demo:
	./scripts/run demo

# The whole suite: unit, kernel (real BPF, cgroups), e2e, then the VM tests (pure cgroup v2).
test:
	./scripts/run test

install: setup
	$(VENV)/bin/agentctl install-service

clean:
	rm -rf $(VENV) .vm
