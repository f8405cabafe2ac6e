"""systemd/agentd.service: `systemd-analyze verify` accepts it, as installed.

verify exits 0 even on lines it ignores, so the test reads what it prints and fails on any
line at all (a clean unit prints nothing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.agentctl import render_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "agentd.service"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian: systemd)")


def _agentd_exe() -> str:
    beside = Path(sys.executable).parent / "agentd"
    return str(beside) if beside.exists() else "/bin/true"


def verify(text: str, tmp_path: Path) -> str:
    unit = tmp_path / "agentd.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    return (r.stdout + r.stderr).strip()


@needs_systemd
def test_the_installed_unit_verifies_without_a_single_warning(tmp_path):
    out = verify(render_unit(UNIT.read_text(), _agentd_exe()), tmp_path)
    assert out == "", out


@needs_systemd
def test_the_check_catches_what_systemd_ignores(tmp_path):
    # proves the test above would fail: verify exits 0 here and only prints warnings
    broken = render_unit(UNIT.read_text(), _agentd_exe()).replace("Type=notify", "Type=notfy")
    broken = broken.replace("[Install]", "Delegat=yes\n[Install]")
    out = verify(broken, tmp_path)
    assert "Failed to parse service type" in out and "Unknown key 'Delegat'" in out


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_what_the_daemon_needs():
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Delegate"] == ["yes"] and d["Restart"] == ["on-failure"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].endswith("/agentd run")
    assert "WatchdogSec" in d and d["RuntimeDirectory"] == ["agentd"]
    assert d["StateDirectory"] == ["agentd"]
    assert d["KillMode"] == ["process"]  # agents outlive a restart of agentd
    assert d["ProtectSystem"] == ["strict"]
    assert "/sys/fs/cgroup" in d["ReadWritePaths"][0].split()
    # these make /sys/fs/cgroup (or the kernel headers BCC needs) unusable
    for key in ("ProtectControlGroups", "ProtectKernelTunables", "ProtectKernelModules",
                "PrivateDevices", "MemoryDenyWriteExecute"):
        assert key not in d, key


def test_every_capability_is_named_with_a_reason():
    text = UNIT.read_text()
    caps = _directives(text)["CapabilityBoundingSet"][0].split()
    assert caps and all(c.startswith("CAP_") for c in caps)
    for cap in caps:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), f"{cap} has no comment saying why"
    assert "CAP_DAC_OVERRIDE" not in caps and "CAP_SETUID" not in caps


def test_the_unit_agrees_with_the_daemons_defaults():
    """The policy directory agentd uses by default is the one the unit creates and leaves
    writable (ProtectSystem=strict would make `policy apply` fail otherwise); the state is
    0700; results live under the runtime directory, reachable by agents."""
    from agentd.toolcalls.results import default_results_root
    from agentd.paths import DEFAULT_POLICY_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR

    d = _directives(UNIT.read_text())
    assert str(DEFAULT_POLICY_DIR) in d["ReadWritePaths"][0].split()
    assert d["ConfigurationDirectory"] == [str(DEFAULT_POLICY_DIR.relative_to("/etc"))]
    assert d["StateDirectoryMode"] == ["0700"] and DEFAULT_STATE_DIR == Path("/var/lib") / d["StateDirectory"][0]
    assert DEFAULT_SOCKET.parent == Path("/run") / d["RuntimeDirectory"][0] and d["RuntimeDirectoryMode"] == ["0755"]
    assert default_results_root(DEFAULT_SOCKET).parent == DEFAULT_SOCKET.parent
    caps = d["CapabilityBoundingSet"][0].split()
    assert "CAP_CHOWN" in caps  # results are fchown'ed to the agent
    assert "CAP_DAC_OVERRIDE" not in caps and "CAP_FOWNER" not in caps
    allowed = d["SystemCallFilter"][0].split()
    assert allowed[0] == "@system-service" and {"bpf", "perf_event_open"} <= set(allowed)
