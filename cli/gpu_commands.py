"""`agentctl estimate` and `agentctl gpu`: GPU memory/utilization estimates and a live GPU table.

Both work without the daemon: `estimate` is offline arithmetic (agentd.gpu.estimate), `gpu`
asks NVML directly and reads /proc for each process's pid namespaces and cgroup.
Exit codes: 0 ok, 1 failure (no driver, estimator failed), 2 usage.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import click

from agentd import units
from agentd.gpu.spec import PART_NAMES, ModelSpec, WorkloadSpec

_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def human(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_count(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([KMBT])?\s*", str(text), re.I)
    if not m:
        raise click.BadParameter(f"expected a parameter count such as 7.5e9 or 7B, got {text!r}")
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[(m.group(2) or "").upper()]


def _fake_backend(n: int):
    from agentd.gpu.fake_nvml import FakeNvmlBackend

    me, parent = os.getpid(), os.getppid()
    procs = {0: [(me, 3 * 2**30)]}
    if n > 1:
        procs[1] = [(parent, 12 * 2**30)]
    return FakeNvmlBackend(gpus=n, processes=procs)


def _sampler(simulate: int):
    from agentd.gpu.sampler import NvmlSampler

    return NvmlSampler(backend=_fake_backend(simulate) if simulate else None)


def _no_driver_line(line: str) -> str:
    m = re.match(r"no NVIDIA driver \((.*)\); (.*)", line)
    if m:
        return f"no NVIDIA driver: {m.group(1)}; {m.group(2)}"
    return line if line.startswith("no NVIDIA driver") else f"no NVIDIA driver: {line}"


# --- agentctl estimate --------------------------------------------------------------------
@click.command("estimate")
@click.option("--hf-config", "hf_config", type=click.Path(exists=True, dir_okay=False),
              help="a Hugging Face config.json describing the model")
@click.option("--params", "params", help="parameter count instead of a config, e.g. 7.5e9 or 7B")
@click.option("--mode", type=click.Choice(["train", "infer"]), default="train", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]), default=None,
              help="parameter/activation dtype (default: fp32 to train, the config's dtype to infer)")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd", "sgd_momentum"]), default="adam",
              show_default=True)
@click.option("--mixed-precision", is_flag=True, help="half-precision weights and activations, fp32 master copy")
@click.option("--zero-stage", type=click.IntRange(0, 3), default=0, show_default=True)
@click.option("--dp", type=click.IntRange(min=1), default=1, show_default=True, help="data-parallel degree")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="tensor-parallel degree")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="micro-batch (train) or concurrent sequences (infer)")
@click.option("--seq", type=click.IntRange(min=1), default=2048, show_default=True,
              help="sequence length; for infer, the context the KV cache must hold")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="none", show_default=True)
@click.option("--attention", type=click.Choice(["flash", "eager"]), default="flash", show_default=True,
              help="flash/SDPA keeps no s^2 scores; eager keeps softmax output")
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--grad-buffers", type=click.Choice(["auto", "freed", "persistent"]), default="auto", show_default=True,
              help="persistent: DDP/ZeRO/Megatron keep gradients all step; freed: zero_grad(set_to_none=True); "
                   "auto: persistent when dp, tp or ZeRO is used")
@click.option("--optimizer-impl", type=click.Choice(["foreach", "single", "fused"]), default="foreach",
              show_default=True, help="foreach Adam holds one parameter-sized temporary in its step")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--method", type=click.Choice(["analytical", "learned", "cpu_side", "auto"]), default="analytical",
              show_default=True)
@click.option("--gpu", "gpu_kind", default="h100", show_default=True, help="GPU for the utilization estimate")
@click.option("--free", "free", default=None, help="check the fit against this much free memory, e.g. 40GiB")
@click.option("--fit", is_flag=True, help="check the fit against each live GPU's free memory (NVML)")
@click.option("--simulate-gpus", type=click.IntRange(min=0), default=0, help="--fit against N simulated GPUs")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def estimate(hf_config, params, mode, dtype, optimizer, mixed_precision, zero_stage, dp, tp, batch, seq,
             recompute, attention, dropout, grad_buffers, optimizer_impl, device, method, gpu_kind, free, fit,
             simulate_gpus, as_json):
    """Estimate peak GPU memory (with its parts and a range) and utilization, offline."""
    from agentd.gpu.estimate import estimate as run_estimate, fit_check, fit_verdict
    from agentd.gpu.utilization import gpu_model, solo_utilization

    if bool(hf_config) == bool(params):
        raise click.UsageError("give exactly one of --hf-config FILE or --params N")
    try:
        if hf_config:
            with open(hf_config) as f:
                cfg = json.load(f)
            stem = os.path.splitext(os.path.basename(hf_config))[0]
            if stem == "config":  # a model folder's config.json: name it after the folder
                stem = os.path.basename(os.path.dirname(os.path.abspath(hf_config)))
            model = ModelSpec.from_hf_config(cfg, name=stem)
        else:
            model = ModelSpec.from_params(parse_count(params), dtype=dtype or "fp16")
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--hf-config/--params")
    if model.dtype and dtype is None and mode == "infer":
        dtype = model.dtype
    wl = WorkloadSpec(mode=mode, batch=batch, seq=seq, dtype=dtype or "", mixed_precision=mixed_precision,
                      optimizer=optimizer, zero_stage=zero_stage, dp=dp, tp=tp, recompute=recompute,
                      attention=attention, dropout=dropout, grad_buffers=grad_buffers,
                      optimizer_impl=optimizer_impl, device=device)
    try:
        gpu_model(gpu_kind)
        wl.resolved(model)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    t0 = time.perf_counter()
    try:
        est = run_estimate(model, wl, method=method)
    except Exception as exc:  # noqa: BLE001 - estimator failures are exit 1 with one line
        click.echo(f"estimate failed ({method}): {exc}", err=True)
        sys.exit(1)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    out = est.to_json()
    out["latency_ms"] = round(elapsed_ms, 3)
    out["model"] = model.to_json()
    out["workload"] = wl.resolved(model).to_json()
    util = None
    if model.has_architecture or model.parameters:
        util = solo_utilization(model, wl, gpu=gpu_kind)
        out["utilization"] = util.to_json()
    fits = []
    if free:
        fits.append(fit_verdict(est, parse_size(free), gpu=-1, name="--free"))
    if fit or simulate_gpus:
        snap = _sampler(simulate_gpus).sample()
        if not snap.available:
            click.echo(_no_driver_line(snap.status) + " (--fit needs live GPUs; use --free SIZE)", err=True)
            sys.exit(1)
        fits.extend(fit_check(est, snap, util=util))
        out["fit_backend"] = snap.backend
    if fits:
        out["fit"] = [v.to_json() for v in fits]
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    _print_estimate(model, wl, est, util, fits, elapsed_ms, out.get("fit_backend"))


def _print_estimate(model, wl, est, util, fits, elapsed_ms, fit_backend) -> None:
    r = wl.resolved(model)
    name = model.name or ("model" if model.has_architecture else "model of given size")
    click.echo(f"{name}: {est.parameters / 1e9:.3f} B parameters, {r.mode}, {r.dtype}"
               f"{' mixed precision' if r.mixed_precision else ''}, batch {r.batch} x seq {r.seq}"
               + (f", ZeRO-{r.zero_stage} dp={r.dp}" if r.zero_stage or r.dp > 1 else "")
               + (f", tp={r.tp}" if r.tp > 1 else "") + f"  [{est.method}{', fell back' if est.fell_back else ''}]")
    click.echo(f"{'part':<18}{'at peak':>14}{'full size':>14}")
    for p in PART_NAMES:
        full = est.full_parts.get(p)
        click.echo(f"{p:<18}{human(est.parts.get(p, 0)):>14}{human(full) if full is not None else '':>14}")
    click.echo(f"{'total (peak)':<18}{human(est.total_bytes):>14}   range {human(est.low_bytes)} .. {human(est.high_bytes)}")
    click.echo(f"model states {human(est.model_states_bytes)}; peak during {est.phase}; estimated in {elapsed_ms:.2f} ms")
    if est.kv_bytes_per_token:
        click.echo(f"KV cache: {human(est.kv_bytes_per_token)} per token")
    if util is not None:
        click.echo(f"utilization on {util.gpu}: GPU {util.gpu_util * 100:.0f} %, SM activity {util.sm_activity * 100:.0f} %, "
                   f"bandwidth {util.bandwidth_pressure * 100:.0f} % ({util.bound}-bound, step {util.step_seconds * 1000:.1f} ms; "
                   "a bound, not measured here)")
    for n in est.notes:
        click.echo(f"note: {n}")
    for v in fits:
        where = "given free memory" if v.gpu < 0 else f"GPU {v.gpu} {v.name}"
        label = " (simulated)" if fit_backend == "simulated" and v.gpu >= 0 else ""
        click.echo(f"fit on {where}{label}: {v.verdict} (free {human(v.free_bytes)}, headroom above the high end "
                   f"{human(v.headroom_bytes)})")
        if v.slowdown_high is not None:
            click.echo(f"  next to its {v.neighbour_util * 100:.0f} % load: this job {v.slowdown_low:.2f}x (MPS) to "
                       f"{v.slowdown_high:.2f}x (time-sliced) slower, what runs there up to "
                       f"{v.neighbour_slowdown_high:.2f}x slower (a bound)")


# --- agentctl gpu -------------------------------------------------------------------------
def render_table(snap) -> str:
    lines = []
    tag = "SIMULATED GPUs (fake NVML backend, not real hardware) — " if snap.backend == "simulated" else ""
    lines.append(f"{tag}{snap.status}   sample took {snap.sample_seconds * 1000:.2f} ms")
    lines.append(f"{'GPU':<4}{'name':<34}{'memory used/total':>24}{'util':>6}{'SM MHz':>8}{'power':>14}{'temp':>6}  health")
    for g in snap.gpus:
        mem = f"{human(g.memory_used_bytes)} / {human(g.memory_total_bytes)}"
        util = f"{g.util_gpu}%" if g.util_gpu is not None else "-"
        power = (f"{g.power_w:.0f}/{g.power_limit_w:.0f} W" if g.power_w is not None and g.power_limit_w
                 else (f"{g.power_w:.0f} W" if g.power_w is not None else "-"))
        temp = f"{g.temperature_c}C" if g.temperature_c is not None else "-"
        clock = str(g.sm_clock_mhz) if g.sm_clock_mhz is not None else "-"
        lines.append(f"{g.index:<4}{g.name[:33]:<34}{mem:>24}{util:>6}{clock:>8}{power:>14}{temp:>6}  {g.health}")
        for m in g.mig:
            lines.append(f"    MIG {m.index} (GI {m.gpu_instance_id}/CI {m.compute_instance_id}) "
                         f"{human(m.memory_used_bytes)} / {human(m.memory_total_bytes)}")
    procs = snap.processes()
    lines.append("")
    if not procs:
        lines.append("no GPU processes")
    else:
        lines.append(f"{'GPU':<4}{'host pid':>9}{'ns pid':>8}  {'command':<16}{'memory':>12}{'SM%':>5}  unit")
        for p in procs:
            ns = str(p.container_pid) if p.container_pid is not None else "-"
            sm = str(p.sm_util) if p.sm_util is not None else "-"
            lines.append(f"{p.gpu:<4}{p.host_pid:>9}{ns:>8}  {p.comm[:15] or '?':<16}{human(p.used_memory_bytes):>12}"
                         f"{sm:>5}  {p.unit or '(gone)'}")
    return "\n".join(lines)


def snapshot_from_json(d: dict):
    """A GpuSnapshot back from its to_json() form (what the daemon's status carries)."""
    from agentd.gpu.sampler import GpuInfo, GpuProcess, GpuSnapshot, MigInstance

    gpus = []
    for g in d.get("gpus") or []:
        g = dict(g)
        g["processes"] = [GpuProcess(**p) for p in g.get("processes") or []]
        g["mig"] = [MigInstance(**x) for x in g.get("mig") or []]
        gpus.append(GpuInfo(**g))
    fields = {k: v for k, v in d.items() if k not in ("gpus", "degraded")}
    return GpuSnapshot(**fields, gpus=gpus)


def daemon_view(socket_path: str | None):
    """(snapshot, jobs) from the running daemon's sampler, or None when no daemon answers
    (or the caller may not read its status: then NVML is read here)."""
    if not socket_path or not os.path.exists(socket_path):
        return None
    from agentd.api.client import ApiClient, ApiClientError

    try:
        status = ApiClient(socket_path).status()
    except (ApiClientError, OSError):
        return None
    snap = ((status.get("gpu") or {}).get("snapshot")) if isinstance(status, dict) else None
    if not snap:
        return None
    jobs = ((status.get("kinds") or {}).get("colocation") or {}).get("jobs") or []
    return snapshot_from_json(snap), jobs


def render_jobs_line(jobs: list) -> str:
    placed = [j for j in jobs if j.get("state") == "placed"]
    waiting = [j for j in jobs if j.get("state") == "queued"]
    parts = [f"{j['name']} ({j.get('class')}) on GPU {','.join(map(str, j.get('gpus') or []))}"
             + (f" [{j['guard']}]" if j.get("guard") not in (None, "normal") else "") for j in placed]
    line = "jobs: " + ("; ".join(parts) if parts else "none placed")
    if waiting:
        line += f"; {len(waiting)} waiting: " + ", ".join(j["name"] for j in waiting)
    return line


@click.command("gpu")
@click.option("--once", is_flag=True, help="print one table and exit")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="refresh period (s)")
@click.option("--simulate-gpus", type=click.IntRange(min=0), default=0,
              help="show N simulated GPUs (fake NVML backend, clearly labelled)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON snapshot (implies --once)")
@click.pass_context
def gpu(ctx, once, interval, simulate_gpus, as_json):
    """Live GPUs and GPU processes: memory, utilization, and which agentd unit or job each
    belongs to. Asks the running daemon's sampler; reads NVML itself when no daemon runs."""
    root = ctx.find_root().obj
    socket_path = getattr(root, "socket_path", None)
    view = None if simulate_gpus else daemon_view(socket_path)
    if view is not None:
        try:
            while True:
                snap, jobs = view
                if as_json:
                    click.echo(json.dumps({**snap.to_json(), "source": "daemon", "jobs": jobs}, sort_keys=True,
                                          default=str))
                    return
                text = f"from agentd's sampler ({socket_path})\n" + render_table(snap) + "\n" + render_jobs_line(jobs)
                if once:
                    click.echo(text)
                    return
                click.echo("\x1b[H\x1b[2J" + text + f"\n\nrefreshing every {interval:g} s; Ctrl-C to stop", nl=False)
                time.sleep(interval)
                view = daemon_view(socket_path) or view
        except KeyboardInterrupt:
            click.echo("")
            return
    sampler = _sampler(simulate_gpus)
    ok, line = sampler.probe()
    if not ok:
        if as_json:
            click.echo(sampler.sample().dumps())
        else:
            click.echo(_no_driver_line(line), err=True)
        sys.exit(1)
    try:
        if as_json:
            click.echo(sampler.sample().dumps())
            return
        if once:
            click.echo(render_table(sampler.sample()))
            return
        while True:
            table = render_table(sampler.sample())
            click.echo("\x1b[H\x1b[2J" + table + f"\n\nrefreshing every {interval:g} s; Ctrl-C to stop", nl=False)
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo("")
    finally:
        sampler.close()
