"""`agentctl tiers` on every fixture topology and on this machine, without a daemon."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.agentctl import main

FIX = Path(__file__).resolve().parent / "fixtures"


def run(*args):
    r = CliRunner().invoke(main, ["--socket", "/nonexistent/agentd.sock", *args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("host,rows", [
    ("two_socket_dram", [("local", "0"), ("local", "1")]),
    ("one_cxl", [("local", "0"), ("local", "1"), ("far", "2")]),
    ("two_cxl", [("local", "0"), ("local", "1"), ("far", "2"), ("far", "3")]),
    ("nvme_swap", [("local", "0")]),
    ("cxl_not_onlined", [("local", "0"), ("local", "1"), ("far (no memory)", "2")]),
])
def test_the_table_on_each_fixture(host, rows):
    out = run("tiers", "show", "--sys-root", str(FIX / host / "sys"), "--proc-root", str(FIX / host / "proc"))
    header, *table = out.split("Swap:")[0].splitlines()[1:]
    assert header.split()[:4] == ["TIER", "MEMORY_TIER", "ADISTANCE", "NODE"]
    cols = [re.split(r"\s{2,}", line.strip()) for line in table]
    assert [(c[0], c[3]) for c in cols] == rows
    if host == "nvme_swap":
        assert "/dev/nvme0n1p3  nvme" in out and "zswap: Y (zstd)" in out
    data = json.loads(run("--json", "tiers", "show", "--sys-root", str(FIX / host / "sys"), "--proc-root",
                          str(FIX / host / "proc")))
    assert [n["id"] for n in data["host"]["nodes"]] == sorted(int(r[1]) for r in rows)
    assert data["daemon"] is False and data["processes"] == []


def test_this_machine_without_a_daemon():
    out = run("tiers")
    assert "Memory tiers" in out and "agentd is not running" in out
    data = json.loads(run("--json", "tiers"))
    assert data["host"]["nodes"] and data["daemon"] is False
