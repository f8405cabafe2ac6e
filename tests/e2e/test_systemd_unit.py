"""systemd/agentd.service and systemd/agentd-tree.service: `systemd-analyze verify` accepts
them, as installed, and they say what the daemon needs.

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
TREE = REPO / "systemd" / "agentd-tree.service"
TREE_ROOT = "/system.slice/agentd-tree.service"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian: systemd)")


def _agentd_exe() -> str:
    beside = Path(sys.executable).parent / "agentd"
    return str(beside) if beside.exists() else "/bin/true"


def verify(text: str, tmp_path: Path, tree: str | None = None) -> str:
    """verify both units side by side (agentd.service Requires= the tree)."""
    unit = tmp_path / "agentd.service"
    unit.write_text(text)
    (tmp_path / "agentd-tree.service").write_text(TREE.read_text() if tree is None else tree)
    r = subprocess.run(["systemd-analyze", "verify", str(unit), str(tmp_path / "agentd-tree.service")],
                       capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip()


@needs_systemd
def test_the_installed_units_verify_without_a_single_warning(tmp_path):
    out = verify(render_unit(UNIT.read_text(), _agentd_exe()), tmp_path)
    assert out == "", out


@needs_systemd
def test_the_check_catches_what_systemd_ignores_in_the_tree_unit(tmp_path):
    out = verify(render_unit(UNIT.read_text(), _agentd_exe()), tmp_path,
                 tree=TREE.read_text().replace("KillMode=control-group", "KillMode=control-grup"))
    assert "control-grup" in out


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
    # agentd's own cgroup holds no agents: a restart on systemd < 254 must not meet EBUSY there
    assert "Delegate" not in d and d["Restart"] == ["on-failure"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].endswith(f"/agentd run --cgroup-root {TREE_ROOT}")
    assert d["Requires"] == ["agentd-tree.service"] and "agentd-tree.service" in d["After"][0].split()
    # no BindsTo=/PartOf=: those would make a stop or restart of agentd reach the tree
    assert "BindsTo" not in d and "PartOf" not in d
    assert "WatchdogSec" in d and d["RuntimeDirectory"] == ["agentd"]
    assert d["StateDirectory"] == ["agentd"]
    assert d["KillMode"] == ["process"]  # the exec-gate guard outlives agentd
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


def test_the_tree_unit_owns_the_agents_and_does_nothing_else():
    """agentd-tree.service: a delegated cgroup (its path is agentd's --cgroup-root), a holder
    that does nothing with no capability, `systemctl stop agentd-tree` ending every agent
    (control-group), and nothing systemd would apply to the whole cgroup, i.e. to agents."""
    d = _directives(TREE.read_text())
    assert d["Delegate"] == ["yes"] and d["KillMode"] == ["control-group"]
    assert d["ExecStart"] == ["/bin/sleep infinity"] and d["Type"] == ["exec"]
    assert d["CapabilityBoundingSet"] == [""] and d["NoNewPrivileges"] == ["yes"]
    assert d["TasksMax"] == ["infinity"] and d["OOMScoreAdjust"] == ["-1000"]
    # a User= makes systemd chown the delegated cgroup to it: agentd refuses such a root
    assert "User" not in d and "DynamicUser" not in d
    for key in ("PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "IPAddressDeny",
                "IPAddressAllow", "RestrictNetworkInterfaces", "RestrictFileSystems", "MemoryMax",
                "MemoryHigh", "CPUQuota", "Restart"):
        assert key not in d, key
    assert TREE_ROOT == "/system.slice/" + TREE.name  # the default slice of a system service
