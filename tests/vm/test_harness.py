"""Host-only checks of the VM harness plumbing (no VM booted): the JUnit mapping that
reports each guest test on the host, and the one-line reasons when the VM cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import test_vm  # tests/vm is on sys.path (pytest's default rootdir-relative import)

harness = test_vm.harness


def test_junit_outcomes_map_back_to_the_host_listed_ids(tmp_path):
    """A real pytest run (the installed version) over a guest-like tree: every id listed
    with --collect-only is found in the JUnit XML with its outcome and failure text."""
    guest = tmp_path / "tests" / "vm" / "guest"
    guest.mkdir(parents=True)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (guest / "test_sample.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok(): pass
        def test_bad():
            print("said in the guest")
            assert 1 == 2, "arithmetic"
        def test_skip(): pytest.skip("no widget")
        @pytest.fixture
        def boom(): raise RuntimeError("fixture exploded")
        def test_err(boom): pass
        @pytest.mark.parametrize("x", [1, "a/b::c"])
        def test_p(x): assert x == 1
        class TestK:
            def test_m(self): pass
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    listed = subprocess.run(base + ["--collect-only", "-q", "tests/vm/guest"], cwd=tmp_path,
                            env=env, capture_output=True, text=True).stdout
    ids = [line for line in listed.splitlines() if "::" in line]
    assert len(ids) == 7, listed
    junit = tmp_path / "junit.xml"
    subprocess.run(base + ["-q", f"--junitxml={junit}", "-o", "junit_logging=all",
                           "tests/vm/guest"], cwd=tmp_path, env=env, capture_output=True)
    cases = test_vm.parse_junit(junit)
    got = {i.split("::", 1)[1]: cases[test_vm.junit_key(i)] for i in ids}
    assert {k: c.outcome for k, c in got.items()} == {
        "test_ok": "passed", "test_bad": "failed", "test_skip": "skipped",
        "test_err": "failed", "test_p[1]": "passed", "test_p[a/b::c]": "failed",
        "TestK::test_m": "passed",
    }
    assert "arithmetic" in got["test_bad"].message
    assert "said in the guest" in got["test_bad"].text
    assert "Captured log" not in got["test_bad"].text  # empty sections dropped
    assert "fixture exploded" in got["test_err"].message + got["test_err"].text
    assert "no widget" in got["test_skip"].message


def test_missing_kernel_is_a_one_line_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "KERNEL_DIR", tmp_path / "no-kernel")
    with pytest.raises(harness.VMError) as e:
        harness.boot_and_run(["true"])
    assert "no VM kernel" in str(e.value) and "vm-setup.sh" in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_qemu_is_a_one_line_reason(monkeypatch):
    real_which = harness.shutil.which
    monkeypatch.setattr(harness.shutil, "which",
                        lambda name: None if name.startswith("qemu") else real_which(name))
    monkeypatch.setattr(harness, "_venv_bin", lambda: Path(sys.executable).parent)
    if not (Path(sys.executable).parent / "vng").exists():
        pytest.skip("virtme-ng is not installed beside this interpreter")
    with pytest.raises(harness.VMError, match="qemu-system-x86_64 is missing"):
        harness.boot_and_run(["true"])


def test_numa_layout_three_nodes_one_cpuless_and_slow():
    args = harness.numa_layout(2048, 2)
    numa = [args[i + 1] for i, a in enumerate(args) if a == "--numa"]
    assert numa == ["1024M,cpus=0,initiator=0", "512M,cpus=1,initiator=1", "512M,initiator=0"]
    qemu = next(a for a in args if a.startswith("--qemu-opts="))
    assert "hmat=on" in qemu
    assert "initiator=0,target=2,hierarchy=memory,data-type=access-latency,latency=200" in qemu


def _panics_then(outcomes, monkeypatch, tmp_path):
    """Replace one boot with the next of `outcomes` (a VMError to raise or a value)."""
    calls = []

    def boot_once(command, **kwargs):
        calls.append(kwargs.get("files_dir"))
        (tmp_path / "console.log").write_text(f"boot {len(calls)}\n")
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(harness, "_boot_once", boot_once)
    return calls


def test_a_panic_while_booting_is_booted_again_and_its_console_kept(monkeypatch, tmp_path):
    panic = harness.VMError("guest kernel panicked: Kernel panic - not syncing: x",
                            files_dir=tmp_path, before_command=True)
    calls = _panics_then([panic, "ran"], monkeypatch, tmp_path)
    assert harness.boot_and_run(["true"]) == "ran"
    assert calls == [None, tmp_path]
    assert (tmp_path / "console.attempt1.log").read_text() == "boot 1\n"


def test_a_panic_after_the_command_started_runs_it_once_more_in_a_fresh_folder(monkeypatch, tmp_path):
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "checks.jsonl").write_text('{"check": "reached by the first run only"}\n')
    panic = harness.VMError("guest kernel panicked: Kernel panic - not syncing: x",
                            files_dir=rw, before_command=False)
    calls = _panics_then([panic, "ran"], monkeypatch, tmp_path)
    assert harness.boot_and_run(["true"]) == "ran"
    assert calls == [None, rw]
    assert list(rw.iterdir()) == []  # the second run starts empty: nothing of the first counts
    assert (tmp_path / "rw.attempt1" / "checks.jsonl").exists()


def test_a_second_panic_after_the_command_started_fails(monkeypatch, tmp_path):
    rw = tmp_path / "rw"
    rw.mkdir()
    panic = harness.VMError("guest kernel panicked: Kernel panic - not syncing: x",
                            files_dir=rw, before_command=False)
    calls = _panics_then([panic, panic, "ran"], monkeypatch, tmp_path)
    with pytest.raises(harness.VMError, match="panicked"):
        harness.boot_and_run(["true"])
    assert len(calls) == 2


def test_a_crash_that_is_no_panic_is_not_retried(monkeypatch, tmp_path):
    crash = harness.VMError("guest crashed or powered off while the command ran (vng exit status 1)",
                            files_dir=tmp_path, before_command=False)
    calls = _panics_then([crash, "ran"], monkeypatch, tmp_path)
    with pytest.raises(harness.VMError, match="powered off"):
        harness.boot_and_run(["true"])
    assert len(calls) == 1


def test_boot_panics_give_up_after_the_last_attempt(monkeypatch, tmp_path):
    panic = harness.VMError("guest kernel panicked: Kernel panic - not syncing: x",
                            files_dir=tmp_path, before_command=True)
    calls = _panics_then([panic] * harness.BOOT_ATTEMPTS, monkeypatch, tmp_path)
    with pytest.raises(harness.VMError, match="panicked"):
        harness.boot_and_run(["true"])
    assert len(calls) == harness.BOOT_ATTEMPTS
