"""cmd_admit's identity checks against a fixture /proc: a caller may only make its own
process a job (the peer pid's real uid must be the caller's), and bad input is a 400."""
import pytest

from agentd.api.auth import Caller
from agentd.api.contract import ApiError, Peer
from agentd.colocation import model as m
from agentd.colocation.kind import ColocationKind
from agentd.colocation.policy import ColocationPolicy, JobClass
from agentd.kinds.changes import ChangeLog
from agentd.kinds.context import KindContext, SharedModel
from agentd.kinds.state import KindDatabase

G = 2**30


def fake_proc(root, pid, uid, state="S"):
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (python) {state} 1 " + " ".join(["0"] * 17) + " 12345 0 0\n")
    (d / "status").write_text(f"Name:\tpython\nTgid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nNSpid:\t{pid}\n")


@pytest.fixture
def kind(tmp_path):
    db = KindDatabase(":memory:")
    state = db.view("colocation")
    events = []
    emit = lambda kind, msg, **kw: events.append((kind, msg, kw)) or {}  # noqa: E731
    ctx = KindContext(name="colocation", prefix="job", driver=object(), model=SharedModel(), state=state,
                      changes=ChangeLog("job", state, emit, lambda: 0.0), journal_emit=emit, clock=lambda: 0.0)
    k = ColocationKind(sysfs_root=str(tmp_path / "sys-root"), proc_root=str(tmp_path / "proc"))
    k.cpu_weight = k.cpus_knob = k.mems_knob = None
    k.ctx = ctx
    k.policy = ColocationPolicy(classes={"training": JobClass("training", "best-effort")})
    k.views = [m.GpuView(0, "GPU-x", 80 * G, G // 2)]
    k.events = events
    return k


def caller(pid, uid):
    return Caller(Peer(pid=pid, uid=uid, gid=uid), admin=uid == 0, agent=None)


def test_a_process_of_another_uid_is_never_made_a_job(kind, tmp_path):
    fake_proc(tmp_path / "proc", 4242, uid=0)  # the peer pid now belongs to root (e.g. reused)
    with pytest.raises(ApiError) as e:
        kind.cmd_admit(caller(4242, 1000), {"class": "training", "estimate_bytes": G})
    assert e.value.status == 403 and "belongs to uid 0" in e.value.message
    assert kind.state.jobs == {}


def test_gone_or_zombie_callers_and_bad_sizes_are_400s(kind, tmp_path):
    with pytest.raises(ApiError) as e:
        kind.cmd_admit(caller(999, 1000), {"class": "training", "estimate_bytes": G})
    assert (e.value.status, e.value.code) == (400, "caller_gone")
    fake_proc(tmp_path / "proc", 4243, uid=1000, state="Z")
    with pytest.raises(ApiError) as e:
        kind.cmd_admit(caller(4243, 1000), {"class": "training", "estimate_bytes": G})
    assert e.value.code == "caller_gone"
    for body, code in (({"class": "training", "estimate_bytes": -1}, "estimate_refused"),
                       ({"class": "training"}, "estimate_refused"),
                       ({"class": "training", "model_config": {"hidden_size": "x"}}, "estimate_refused"),
                       ({"class": "nope", "estimate_bytes": G}, "unknown_class"),
                       ({"class": "training", "estimate_bytes": G, "gpus": 0}, "invalid_value")):
        with pytest.raises(ApiError) as e:
            kind.cmd_admit(caller(4243, 1000), body)
        assert (e.value.status, e.value.code) == (400, code), body
    with pytest.raises(ApiError) as e:  # more GPUs than the host has: refused with the reason, journaled
        fake_proc(tmp_path / "proc", 4244, uid=1000)
        kind.cmd_admit(caller(4244, 1000), {"class": "training", "estimate_bytes": G, "gpus": 2})
    assert e.value.code == "job_refused" and "this host has 1" in e.value.message
    assert kind.events[-1][0] == "job.refused"
