"""`agentctl tiers`: the host's memory tiers and where each managed process's memory sits.

Talks to the daemon through ApiClient.kind_get/kind_post only. With no daemon running,
`agentctl tiers` still shows the host's topology, read locally (sysfs/procfs), and says
that no process placement is known.
"""

from __future__ import annotations

import json


import click

from agentd.api.client import DaemonNotRunning, format_size
from cli import render


def _state(ctx: click.Context):
    return ctx.find_root().obj


def _json_flag(ctx: click.Context, _param, value: bool) -> None:
    if value:
        _state(ctx).json = True


json_option = click.option("--json", "json_out", is_flag=True, expose_value=False, callback=_json_flag,
                           help="Machine output: one JSON document.")


def _local_show(sys_root: str, proc_root: str) -> dict:
    from agentd.tiers.topology import discover  # only when the daemon is not there to ask

    return {"host": discover(sys_root, proc_root).to_json(), "processes": [], "daemon": False,
            "degraded": ["agentd is not running: host topology read locally, no process placement known"]}


def tier_rows(host: dict) -> list[dict]:
    rows = []
    for tier in host.get("tiers", []):
        for n in tier["nodes"]:
            node = next((x for x in host.get("nodes", []) if x["id"] == n), {})
            rows.append({"tier": tier["name"], "memory_tier": tier.get("memory_tier"),
                         "adistance": tier.get("abstract_distance"), "node": n, "cpus": node.get("cpus") or "-",
                         "total_bytes": node.get("total_bytes"), "free_bytes": node.get("free_bytes"),
                         "distances": " ".join(str(v) for v in (node.get("distances") or {}).values()) or "-"})
    for node in host.get("nodes", []):  # online nodes without memory (a CXL node not onlined)
        if not node.get("has_memory"):
            rows.append({"tier": node["tier"] + " (no memory)", "node": node["id"], "cpus": node.get("cpus") or "-",
                         "total_bytes": 0, "free_bytes": 0})
    return rows


def render_show(data: dict) -> str:
    host = data["host"]
    out = ["Memory tiers (" + ("kernel memory tiering" if host.get("source") == "memory_tiering"
                               else "no kernel memory tiers: CPU-less nodes taken as far") + ")",
           render.table(tier_rows(host), ["tier", "memory_tier", "adistance", "node", "cpus", "total_bytes",
                                          "free_bytes", "distances"])]
    swaps = [{"swap": s["path"], "medium": s["medium"], "size_bytes": s["size_bytes"], "used_bytes": s["used_bytes"],
              "priority": s["priority"]} for s in host.get("swaps", [])]
    out.append("Swap: " + ("none" if not swaps else ""))
    if swaps:
        out.append(render.table(swaps))
    zswap = host.get("zswap") or {}
    out.append(f"zswap: {zswap.get('enabled', 'absent')} ({zswap.get('compressor', '-')})  "
               f"zram: {','.join(host.get('zram') or []) or 'none'}  "
               f"demotion: {host.get('demotion_enabled')}  weighted interleave: "
               f"{'yes' if host.get('weighted_interleave') else 'no'}")
    procs = []
    for p in data.get("processes", []):
        nodes = " ".join(f"N{n}={format_size(b)}" for n, b in p.get("node_bytes", {}).items()) or "-"
        plan = p.get("plan") or {}
        procs.append({"pid": p["pid"], "scope": p["scope"], "name": p.get("name"), "class": p.get("class"),
                      "mode": plan.get("mode"), "target": ",".join(map(str, plan.get("nodes", []))) or "-",
                      "pages": nodes, "swap_bytes": p.get("swap_bytes"),
                      "on_target_pct": p.get("on_target_pct")})
    out.append("")
    out.append("Managed processes:" if data.get("daemon", True) else "Managed processes: unknown (agentd is not running)")
    if data.get("daemon", True):
        out.append(render.table(procs))
    for line in data.get("degraded", []):
        out.append(f"note: {line}")
    for cls, why in (data.get("refused") or {}).items():
        out.append(f"refused: {cls}: {why}")
    return "\n".join(out)


@click.group(name="tiers", invoke_without_command=True)
@json_option
@click.pass_context
def group(ctx: click.Context) -> None:
    """Memory tiers (local DRAM, CXL, swap) and where managed processes' memory sits."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(show)


@group.command()
@click.option("--pid", type=click.IntRange(1, 1 << 22), help="Only this process.")
@click.option("--sys-root", default="/sys", hidden=True)
@click.option("--proc-root", default="/proc", hidden=True)
@json_option
@click.pass_context
def show(ctx: click.Context, pid: int | None = None, sys_root: str = "/sys", proc_root: str = "/proc") -> None:
    """Host tiers (nodes, sizes, distances, swap) and each managed process's pages per node."""
    state = _state(ctx)
    if sys_root != "/sys" or proc_root != "/proc":
        data = _local_show(sys_root, proc_root)  # a fixture tree: never the daemon's picture
    else:
        try:
            data = state.client.kind_get("tiers", "show", **({"pid": str(pid)} if pid else {}))
            data["daemon"] = True
        except DaemonNotRunning:
            data = _local_show(sys_root, proc_root)
    if state.json:
        click.echo(json.dumps(data, default=str))
    else:
        click.echo(render_show(data))


@group.command()
@json_option
@click.pass_context
def revert(ctx: click.Context) -> None:
    """Put back every setting and page the tiers kind changed (admin; until the next policy load)."""
    state = _state(ctx)
    data = state.client.kind_post("tiers", "revert", {})
    if state.json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"reverted {data['reverted_settings']} settings; moving pages of {data['restoring_processes']} "
                   "processes back; placement paused until the policy is reloaded")


