"""Policy apply is crash-safe and start-up survives a bad file (issue 8 item 11).

Apply writes a temporary file, fsyncs it, renames it over the old one and fsyncs the
directory; a process killed at any point leaves the old file or the new one, whole. One bad
file in the policy directory is skipped at start-up (and reported), not fatal."""

import os
import signal

import pytest

from agentd.core import policies as policies_mod
from agentd.core.policies import PolicySet
from agentd.paths import DEFAULT_POLICY
from agentd.policy.loader import PolicyInvalid

OLD = "version: 1\nname: web\ntoolcalls: {defaults: {pids_max: 5}}\n"
NEW = "version: 1\nname: web\ntoolcalls: {defaults: {pids_max: 6}}\n"


def test_apply_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    ps = PolicySet(tmp_path / "p", DEFAULT_POLICY, require_root_owned=False)
    steps = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        steps.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(policies_mod.os, "fsync", fsync)
    monkeypatch.setattr(policies_mod.os, "replace", replace)
    ps.apply(OLD, "web.yaml")
    target, tmp = str(tmp_path / "p" / "web.yaml"), str(tmp_path / "p" / ".web.yaml.tmp")
    assert steps == [("fsync", tmp), ("rename", tmp, target), ("fsync", str(tmp_path / "p"))]
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_a_kill_before_the_rename_leaves_the_old_file_whole(tmp_path):
    d = tmp_path / "p"
    ps = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    ps.apply(OLD, "web.yaml")
    pid = os.fork()
    if pid == 0:  # the daemon, killed between writing the new file and renaming it
        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        policies_mod.os.replace = die
        try:
            ps.apply(NEW, "web.yaml")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (d / "web.yaml").read_text() == OLD
    assert (d / ".web.yaml.tmp").read_text() == NEW  # whole, and ignored at the next start
    again = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    assert again.get("web").toolcalls.defaults.pids_max == 5 and again.skipped == []
    again.apply(NEW, "web.yaml")  # a later apply reuses the stale temporary name
    assert (d / "web.yaml").read_text() == NEW and not (d / ".web.yaml.tmp").exists()


def test_a_refused_reload_rolls_back_durably(tmp_path, monkeypatch):
    d = tmp_path / "p"
    ps = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    ps.apply(OLD, "web.yaml")
    (d / "other.yaml").write_text("version: 1\nname: web\n")  # a second 'web': reload refuses
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(policies_mod.os, "replace", lambda s, t: (renames.append(str(t)), real_replace(s, t)))
    with pytest.raises(PolicyInvalid):
        ps.apply(NEW, "web.yaml")
    assert (d / "web.yaml").read_text() == OLD
    assert renames == [str(d / "web.yaml")] * 2  # the new file in, then the old one back, both by rename
    assert ps.get("web").toolcalls.defaults.pids_max == 5


def test_start_up_skips_a_bad_file_and_runs_with_the_rest(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "good.yaml").write_text("version: 1\nname: good\n")
    (d / "deep.yaml").write_text("version: 1\nname: deep\nx: " + "[" * 100_000 + "\n")
    (d / "typo.yaml").write_text("version: 1\nname: typo\nagent: {memory_max: lots}\n")
    ps = PolicySet(d, DEFAULT_POLICY, require_root_owned=False)
    assert sorted(ps.policies) == ["default", "good"]
    where = sorted(f"{os.path.basename(p.file)}:{p.line}" for p in ps.skipped)
    assert where == ["deep.yaml:3", "typo.yaml:3"]
    with pytest.raises(PolicyInvalid):  # an explicit reload stays all-or-nothing
        ps.reload()
    assert sorted(ps.policies) == ["default", "good"]
