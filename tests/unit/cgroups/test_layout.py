"""agentd.cgroups.layout: every path agentd builds parses back to what built it, and paths
that are not agentd's (or only look like it) parse to nothing."""

from __future__ import annotations

import pytest

from agentd.cgroups import layout
from agentd.cgroups.layout import Place, job_of, locate, parse_rel


def test_built_paths_parse_back():
    assert layout.agent_rel("a1") == "agents/a1"
    assert layout.runtime_rel("a1") == "agents/a1/runtime"
    assert layout.tools_rel("a1") == "agents/a1/tools"
    assert layout.tool_rel("a1", layout.tool_leaf(3, "pytest")) == "agents/a1/tools/0003-pytest"
    assert layout.job_rel("llama") == "jobs/llama"
    assert parse_rel(layout.agent_rel("a1")) == Place("agent", "agents/a1", agent="a1")
    assert parse_rel(layout.runtime_rel("a1")) == Place("runtime", "agents/a1/runtime", agent="a1")
    assert parse_rel(layout.tools_rel("a1")) == Place("tools", "agents/a1/tools", agent="a1")
    assert parse_rel("agents/a1/tools/0003-pytest") == Place("toolcall", "agents/a1/tools/0003-pytest",
                                                             agent="a1", tool="0003-pytest")
    assert parse_rel("jobs/llama") == Place("job", "jobs/llama", job="llama")
    assert parse_rel("agents") == Place("agents", "agents")
    assert parse_rel("jobs/") == Place("jobs", "jobs")
    assert parse_rel("daemon") == Place("daemon", "daemon")


def test_cgroups_a_process_made_inside_a_tool_call_belong_to_it():
    assert parse_rel("agents/a1/tools/0003-make/sub/deeper").rel == "agents/a1/tools/0003-make"
    assert parse_rel("/jobs/train/worker0").job == "train"


@pytest.mark.parametrize("rel", ["", "/", "system.slice", "agents/a1/other", "agentsx/a1", "tools/0001-x"])
def test_paths_outside_the_layout_are_nothing(rel):
    assert parse_rel(rel) is None


def test_locate_splits_an_absolute_path_at_the_layout():
    root, place = locate("/system.slice/agentd.service/agents/a1/tools/0003-pytest")
    assert root == "/system.slice/agentd.service" and place.tool == "0003-pytest" and place.agent == "a1"
    assert locate("/agentd/jobs/llama")[1].job == "llama"
    assert locate("/system.slice/docker-abc.scope") is None
    assert locate("/agents") is None  # agents/ with no agent under it names nothing


def test_job_of_takes_the_name_under_the_last_jobs():
    assert job_of("/system.slice/agentd.service/jobs/llama") == "llama"
    assert job_of("/jobs/outer/jobs/inner/x") == "inner"
    assert job_of("/system.slice/agentd.service/agents/a1/runtime") is None
    assert job_of("/x/jobs") is None
