"""The `colocation:` section of a policy file: job classes and the runtime guard.

    colocation:
      mps_pipe_dir: /tmp/nvidia-mps        # optional: an MPS control daemon runs here
      guard: {memory_high_pct: 95, memory_low_pct: 88, step_s: 5, hold_s: 15, term_grace_s: 10}
      queue: {max_length: 64}
      classes:
        - name: inference
          type: latency-critical
          priority: 100
          slo_tpot_ms: 40                  # time per output token the server must keep
          util_ceiling_pct: 70             # or: the GPU busy share it needs to keep its latency
          max_slowdown: 1.3                # predicted slowdown it accepts from a co-tenant
          memory_headroom: 2G
          sm_share_pct: 60
          cpu_cores: 4
        - name: training
          type: best-effort
          priority: 10
          memory_headroom: 1G
          sm_share_pct: 40

Pure: only agentd.policy.spec. Unknown keys, wrong types and out-of-range values are
errors with file:line (the spec machinery); the cross-field checks below say which class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.policy.spec import ListOf, Mapping, Scalar

LATENCY_CRITICAL = "latency-critical"
BEST_EFFORT = "best-effort"
CLASS_TYPES = (LATENCY_CRITICAL, BEST_EFFORT)


@dataclass(frozen=True)
class JobClass:
    name: str
    type: str  # latency-critical | best-effort
    priority: int = 50  # higher first: in the queue, and the guard acts on the lowest
    slo_tpot_ms: float | None = None  # latency-critical: time per output token it must keep
    util_ceiling_pct: float | None = None  # latency-critical: GPU busy share above which it suffers
    max_slowdown: float = 0.0  # predicted step-time ratio it accepts from co-tenants (0: class default)
    memory_headroom: int = 1 << 30  # GPU memory kept free on every GPU it shares
    sm_share_pct: int = 100  # MPS active thread percentage
    cpu_cores: int = 0  # cores it gets (0: every core local to its GPUs that no LC job keeps)
    exclusive_cores: bool | None = None  # keep its cores apart (default: yes for latency-critical)
    numa_local: bool = True  # cpuset on the NUMA node(s) of its GPUs
    cpu_weight: int = 100
    expected_util_pct: float = 0.0  # solo GPU utilization assumed when nothing better is known
    queue: bool = True  # wait when it does not fit now (False: refuse at once)

    @property
    def latency_critical(self) -> bool:
        return self.type == LATENCY_CRITICAL

    @property
    def slowdown_bound(self) -> float:
        return self.max_slowdown or (1.25 if self.latency_critical else 3.0)

    @property
    def keeps_cores_apart(self) -> bool:
        return self.latency_critical if self.exclusive_cores is None else self.exclusive_cores

    @property
    def solo_util(self) -> float:
        return (self.expected_util_pct or (50.0 if self.latency_critical else 90.0)) / 100.0

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class GuardPolicy:
    memory_high_pct: float = 95.0  # GPU memory in use at which the guard steps in
    memory_low_pct: float = 88.0  # ... and below which the pressure is gone (hysteresis)
    memory_critical_pct: float = 98.0  # OOM is imminent: SIGTERM the best-effort job at once
    slo_clear_ratio: float = 0.9  # an SLO report this far under the target clears the pressure
    slo_report_ttl_s: float = 30.0  # an SLO report older than this no longer counts
    step_s: float = 5.0  # pressure that lasts this long after a step takes the next one
    hold_s: float = 15.0  # pressure gone this long undoes one step (thaw, then the cpu weight)
    term_grace_s: float = 10.0  # SIGTERM to SIGKILL
    lowered_cpu_weight: int = 1


@dataclass(frozen=True)
class ColocationPolicy:
    classes: dict = field(default_factory=dict)  # name -> JobClass
    guard: GuardPolicy = GuardPolicy()
    queue_max: int = 64
    mps_pipe_dir: str = ""

    def job_class(self, name: str) -> JobClass | None:
        return self.classes.get(name)


_CLASS = Mapping(
    {
        "name": Scalar("str", max_len=32, description="the class name agentctl run --class takes"),
        "type": Scalar("enum", choices=CLASS_TYPES),
        "priority": Scalar("int", minimum=0, maximum=1000),
        "slo_tpot_ms": Scalar("number", minimum=0.01, maximum=600_000, description="time per output token"),
        "util_ceiling_pct": Scalar("number", minimum=1, maximum=100),
        "max_slowdown": Scalar("number", minimum=1.0, maximum=100.0),
        "memory_headroom": Scalar("size", description="GPU memory kept free on each GPU the job shares"),
        "sm_share_pct": Scalar("int", minimum=1, maximum=100),
        "cpu_cores": Scalar("int", minimum=0, maximum=4096),
        "exclusive_cores": Scalar("bool"),
        "numa_local": Scalar("bool"),
        "cpu_weight": Scalar("int", minimum=1, maximum=10_000),
        "expected_util_pct": Scalar("number", minimum=1, maximum=100),
        "queue": Scalar("bool"),
    },
    required=("name", "type"),
    extra=[lambda v: _class_checks(v)],
    build=lambda v: JobClass(**v),
)


def _class_checks(v: dict) -> list[tuple[str, str]]:
    out = []
    name = v.get("name") or ""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or not name[0].isalpha():
        out.append(("name", f"expected a class name of letters, digits, - and _ starting with a letter, got {name!r}"))
    if v.get("type") == BEST_EFFORT:
        for key in ("slo_tpot_ms", "util_ceiling_pct"):
            if key in v:
                out.append((key, f"class {name}: {key} is for latency-critical classes; a best-effort class has no SLO"))
    return out


_GUARD = Mapping(
    {
        "memory_high_pct": Scalar("number", minimum=10, maximum=100),
        "memory_low_pct": Scalar("number", minimum=5, maximum=100),
        "memory_critical_pct": Scalar("number", minimum=10, maximum=100),
        "slo_clear_ratio": Scalar("number", minimum=0.1, maximum=1.0),
        "slo_report_ttl_s": Scalar("number", minimum=0.1, maximum=3600),
        "step_s": Scalar("number", minimum=0.05, maximum=3600),
        "hold_s": Scalar("number", minimum=0.05, maximum=3600),
        "term_grace_s": Scalar("number", minimum=0.05, maximum=3600),
        "lowered_cpu_weight": Scalar("int", minimum=1, maximum=10_000),
    },
    extra=[lambda v: [("memory_low_pct", f"expected memory_low_pct below memory_high_pct "
                                        f"({v.get('memory_high_pct', 95.0):g}) so the guard does not flap, got "
                                        f"{v['memory_low_pct']:g}")]
           if v.get("memory_low_pct", 88.0) >= v.get("memory_high_pct", 95.0) else []],
    build=lambda v: GuardPolicy(**v),
)

_QUEUE = Mapping({"max_length": Scalar("int", minimum=0, maximum=10_000)})


def _build(v: dict) -> ColocationPolicy:
    return ColocationPolicy(classes={c.name: c for c in v.get("classes") or ()}, guard=v.get("guard") or GuardPolicy(),
                            queue_max=(v.get("queue") or {}).get("max_length", 64),
                            mps_pipe_dir=v.get("mps_pipe_dir") or "")


def _unique_classes(v: dict) -> list[tuple[str, str]]:
    names = [c.name for c in v.get("classes") or ()]
    dup = sorted({n for n in names if names.count(n) > 1})
    return [("classes", f"class {n!r} is defined more than once") for n in dup]


SPEC = Mapping(
    {
        "classes": ListOf(_CLASS, max_items=64, description="job classes agentctl run --class admits"),
        "guard": _GUARD,
        "queue": _QUEUE,
        "mps_pipe_dir": Scalar("str", max_len=256, description="CUDA_MPS_PIPE_DIRECTORY of a running MPS daemon"),
    },
    required=("classes",),
    extra=[_unique_classes],
    build=_build,
    description="co-location of inference servers and training jobs on shared GPUs (agentd.colocation)",
)
