"""Host entry of the VM tests: boot the VM ONCE per session, run every test of
tests/vm/guest inside it (one pytest run, as root, pure cgroup v2 + NUMA + zram), and
report each guest test here as its own test, with the guest's failure text.

The guest test ids are listed on the host (`pytest --collect-only tests/vm/guest` with
AGENTD_VM_COLLECT=1) when this module is collected; the outcomes come back in the guest's
JUnit XML. If the VM cannot boot, every test here FAILS with the reason.

Environment: AGENTD_VM_TIMEOUT (seconds for boot + guest run, default 1200: the daemon
tests in tests/vm/guest/test_daemon_guest.py run the demo agent and start the daemon twice,
each start compiling the BPF tracker under emulation, minutes on a busy host);
AGENTD_VM_KEEP=1 keeps the results folder (console.log, stdout, stderr, junit.xml) even
when every guest test passed (it is always kept otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"
GUEST_REL = "tests/vm/guest"
TIMEOUT = float(os.environ.get("AGENTD_VM_TIMEOUT", "1200"))


def _load_harness():
    name = "agentd_vm_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "harness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


harness = _load_harness()
REPO = harness.REPO


# ---- guest test ids, listed on the host -----------------------------------------------

COLLECT_ERROR = "<collection of tests/vm/guest>"


def _list_guest_tests() -> tuple[list[str], str]:
    """(node ids relative to the repository, error text or "")."""
    env = dict(os.environ)
    env["AGENTD_VM_COLLECT"] = "1"
    env.pop("AGENTD_IN_VM", None)
    # Let pytest write its assertion-rewritten bytecode for the guest modules here: the
    # guest sees the tree read-only and would otherwise rewrite them at 1/12 the speed.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", "--rootdir", str(REPO), GUEST_REL]
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return [], "listing the guest tests timed out"
    ids = [line.strip() for line in r.stdout.splitlines()
           if line.startswith(GUEST_REL + "/") and "::" in line]
    if r.returncode != 0 or not ids:
        return ids, (f"`{' '.join(cmd[1:])}` exited {r.returncode}:\n"
                     + (r.stdout + r.stderr)[-4000:])
    return ids, ""


GUEST_IDS, COLLECT_PROBLEM = _list_guest_tests()


def _short(node_id: str) -> str:
    return node_id[len(GUEST_REL) + 1:]


# ---- one VM boot per session -------------------------------------------------------


@dataclasses.dataclass
class Case:
    outcome: str  # passed | failed | skipped
    message: str = ""
    text: str = ""


@dataclasses.dataclass
class GuestRun:
    error: "harness.VMError | None" = None
    result: "harness.GuestResult | None" = None
    cases: dict = dataclasses.field(default_factory=dict)  # (classname, name) -> Case
    junit_problem: str = ""
    error_shown: bool = False

    def output_tail(self, n: int = 60) -> str:
        if self.result is None:
            return ""
        out = (self.result.stdout + self.result.stderr).splitlines()
        return "\n".join(out[-n:])


def junit_key(node_id: str) -> tuple[str, str]:
    """The (classname, name) pytest's junitxml gives a node id (its mangle_test_address)."""
    path, bracket, params = node_id.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def parse_junit(path: Path) -> dict:
    cases = {}
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        key = (tc.get("classname", ""), tc.get("name", ""))
        case = Case("passed")
        for child in tc:
            if child.tag in ("failure", "error"):
                what = "error" if child.tag == "error" else "failure"
                case = Case("failed", f"{what}: {child.get('message', '')}", child.text or "")
                break
            if child.tag == "skipped":
                case = Case("skipped", child.get("message", ""), child.text or "")
        if case.outcome == "failed":
            for child in tc:
                if child.tag in ("system-out", "system-err"):
                    case.text += _captured(child.text or "")
        cases[key] = case
    return cases


_SECTION = re.compile(r"^-+ (Captured [^-]*?) -+$", re.M)


def _captured(text: str) -> str:
    """The non-empty "Captured ..." sections of a junit system-out/err, last 3000 chars."""
    parts = _SECTION.split(text)
    out = ""
    for title, body in zip(parts[1::2], parts[2::2]):
        if body.strip():
            out += f"\n--- guest {title.lower()} ---\n{body.strip()[-3000:]}"
    return out


@pytest.fixture(scope="session")
def guest_run():
    rw = Path(tempfile.mkdtemp(prefix="agentd-vm-"))
    junit = rw / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
               "--durations=5", f"--junitxml={junit}", "-o", "junit_logging=all", GUEST_REL]
    run = GuestRun()
    _build_probe(rw)
    try:
        # PYTHONPATH: the daemon and agentctl the guest tests start run this checkout's code
        # (the venv's editable install may point at another checkout).
        run.result = harness.boot_and_run(command, numa=True, zram=True, timeout=TIMEOUT,
                                          files_dir=rw, env={**_plugin_env(), "PYTHONPATH": str(REPO)})
    except harness.VMError as e:
        run.error = e
        yield run
        return
    if junit.exists():
        try:
            run.cases = parse_junit(junit)
        except ET.ParseError as e:
            run.junit_problem = f"unreadable {junit}: {e}"
    else:
        run.junit_problem = f"the guest pytest wrote no {junit} (exit status {run.result.rc})"
    yield run
    # Keep the results folder (console log, guest output, junit.xml) only when something
    # went wrong in the guest.
    if run.result.rc == 0 and not os.environ.get("AGENTD_VM_KEEP"):
        shutil.rmtree(rw, ignore_errors=True)
        run.result.files_removed = True


def _build_probe(rw: Path) -> None:
    """The static probe of tests/vm/guest/test_daemon_guest.py, built here (seconds) instead
    of in the guest (half a minute under emulation); the guest builds it if this fails."""
    try:
        from benchmarks.vm_demo_guest import build_probe

        build_probe(rw)
    except Exception:
        pass


def _plugin_env() -> dict[str, str]:
    """Skip pytest's scan of every installed distribution for plugins in the slow guest
    when no plugin is installed (the usual case); with plugins, let it scan."""
    try:
        from importlib.metadata import entry_points

        if not list(entry_points(group="pytest11")):
            return {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    except Exception:
        pass
    return {}


def _fail_for_vm(run: GuestRun) -> None:
    if run.error is None:
        return
    if run.error_shown:
        pytest.fail(f"VM did not run the guest tests: {run.error.reason} "
                    f"(console and output: see the first VM test failure)", pytrace=False)
    run.error_shown = True
    pytest.fail(f"VM did not run the guest tests: {run.error.describe()}", pytrace=False)


# ---- the host tests ----------------------------------------------------------------------

_PARAMS = [pytest.param(i, id=_short(i)) for i in GUEST_IDS] or \
    [pytest.param(COLLECT_ERROR, id="guest-collection")]


@pytest.mark.vm
@pytest.mark.parametrize("guest_id", _PARAMS)
def test_guest(guest_id: str, guest_run: GuestRun) -> None:
    """One test of tests/vm/guest, as it went inside the VM."""
    if guest_id == COLLECT_ERROR:
        pytest.fail(f"no guest tests listed: {COLLECT_PROBLEM}", pytrace=False)
    _fail_for_vm(guest_run)
    case = guest_run.cases.get(junit_key(guest_id))
    if case is None:
        why = guest_run.junit_problem or "absent from the guest's junit.xml"
        pytest.fail(f"{guest_id} did not run in the VM ({why}); guest pytest exit status "
                    f"{guest_run.result.rc}, last output:\n{guest_run.output_tail()}",
                    pytrace=False)
    if case.outcome == "failed":
        pytest.fail(f"in the VM: {case.message}\n{case.text}", pytrace=False)
    if case.outcome == "skipped":
        pytest.skip(f"skipped in the VM: {case.message}")


@pytest.mark.vm
def test_guest_pytest_completed(guest_run: GuestRun) -> None:
    """The guest pytest ran to its end (exit 0, or 1 for failures reported above) and
    collected what the host listed."""
    _fail_for_vm(guest_run)
    if COLLECT_PROBLEM:
        pytest.fail(f"listing the guest tests on the host failed: {COLLECT_PROBLEM}",
                    pytrace=False)
    rc = guest_run.result.rc
    assert rc in (0, 1), (f"guest pytest exited {rc} (interrupted, internal or usage error, "
                          f"or no tests):\n{guest_run.output_tail()}")
    ran = set(guest_run.cases)
    listed = {junit_key(i) for i in GUEST_IDS}
    assert listed <= ran, f"listed on the host, not run in the VM: {sorted(listed - ran)}"
