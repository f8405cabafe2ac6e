"""`agentctl policy validate FILE` on hostile files (issue 9 item 4): each is a clean
`file:line: ...` problem, exit code 1, no traceback, in milliseconds (before: a
RecursionError after 8 s, a ValueError on a 5,000-digit integer)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "agentctl"
HEAD = "version: 1\nname: hostile\n"
FILES = {
    "deep_flow.yaml": ("[" * 100_000, 1),
    "deep_block.yaml": (HEAD + "agents:\n" + "".join(" " * i + "- \n" for i in range(1, 1200)), 35),
    "long_int.yaml": (HEAD + "toolcalls:\n  defaults:\n    pids_max: " + "9" * 5000 + "\n", 5),
    "inf.yaml": (HEAD + "agent:\n  memory_max: .inf\n", 4),
    "nan.yaml": (HEAD + "agent:\n  cpu_max: .nan\n", 4),
    "laughs.yaml": (HEAD + "a: &a [x, x]\nb: &b [*a, *a]\n", 3),
    "backref.yaml": (HEAD + "toolcalls:\n  tools:\n    - name: t\n      match: {argv: '(a)\\1'}\n", 6),
    "tag.yaml": (HEAD + "x: !!python/object/apply:os.system [id]\n", 3),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_hostile_file_is_a_clean_file_line_problem(tmp_path, name):
    text, line = FILES[name]
    path = tmp_path / name
    path.write_text(text)
    t0 = time.monotonic()
    r = subprocess.run([str(BIN), "policy", "validate", str(path)], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stdout.startswith(f"{path}:{line}: "), r.stdout
    assert took < 3.0  # the process with its imports; the parse itself is milliseconds


def test_json_output_and_binary_and_huge_files(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    huge = tmp_path / "huge.yaml"
    huge.write_text("x: " + "a" * (2 << 20))
    r = subprocess.run([str(BIN), "--json", "policy", "validate", str(binary), str(huge)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    messages = [f["problems"][0]["message"] for f in report["files"]]
    assert messages == ["not UTF-8 text", f"file is larger than {1 << 20} bytes"]


@pytest.mark.parametrize("command", ["apply", "diff"])
def test_apply_and_diff_of_a_binary_file_are_clean_errors(tmp_path, command):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    r = subprocess.run([str(BIN), "--socket", str(tmp_path / "none.sock"), "policy", command, str(binary)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{binary}: not UTF-8 text" in r.stderr
