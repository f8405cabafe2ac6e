"""Where agentd finds its bundled files and keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
BPF_DIR = REPO_ROOT / "bpf"
POLICIES_DIR = REPO_ROOT / "policies"
DEFAULT_POLICY = POLICIES_DIR / "default.yaml"
DATA_DIR = REPO_ROOT / "data"
EXAMPLES_DIR = REPO_ROOT / "examples"
SCRIPTS_DIR = REPO_ROOT / "scripts"  # setup, the VM, the GPU measurements that made data/gpu

# The one default socket path: the daemon, the API server, the client and agentctl all take
# it from here (stdlib only, so the client stays light). AGENTD_SOCKET overrides it.
DEFAULT_SOCKET = Path(os.environ.get("AGENTD_SOCKET", "/run/agentd/agentd.sock"))
DEFAULT_STATE_DIR = Path(os.environ.get("AGENTD_STATE_DIR", "/var/lib/agentd"))
# Policy files, read at start and on SIGHUP, written by `agentctl policy apply`: the unit
# creates it (ConfigurationDirectory=) and keeps it writable under ProtectSystem=strict
# (ReadWritePaths=); tests/e2e/test_systemd_unit.py checks that the two agree.
DEFAULT_POLICY_DIR = Path("/etc/agentd/policies.d")
