"""`agentctl kv`: the KV pins agentd holds for inference engines, and what it has learned of
tool-call durations. Talks to the daemon only through ApiClient.kind_get; imports nothing else."""

from __future__ import annotations

import json

import click


def _state(ctx: click.Context, json_out: bool):
    state = ctx.find_root().obj
    if json_out:
        state.json = True
    return state


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _show_pins(state, engine: str | None) -> None:
    data = state.client.kind_get("kv", "pins", **({"engine": engine} if engine else {}))
    if state.json:
        click.echo(json.dumps(data, default=str))
        return
    c = data["counters"]
    rate = "-" if c["hit_rate"] is None else f"{100 * c['hit_rate']:.0f}%"
    click.echo(f"rule {data['rule']} (policy {data['policy']}); hits {c['hits']} + host {c['host_hits']}, "
               f"misses {c['misses']} (hit rate {rate}); evictions {c['evictions']}, expiries {c['expiries']}; "
               f"pinned {c['gpu_gb_s']} GB·s, host {c['host_gb_s']} GB·s")
    for e in data["engines"]:
        click.echo(f"engine {e['name']} (uid {e['uid']}, pid {e['pid']}, {e['model'] or '-'}): {e['programs']} programs, "
                   f"pinned {_size(e['pinned_bytes'])} of budget {_size(e['budget_bytes'])}, host {_size(e['host_bytes_held'])}")
    if not data["pins"]:
        click.echo("no pins")
        return
    click.echo(f"{'ENGINE':<12} {'PROGRAM':<20} {'TIER':<5} {'BYTES':>8} {'BENEFIT':>8} {'TTL':>7} {'STATE':<14} "
               f"{'TOOL CALL':<28} REASON")
    for p in sorted(data["pins"], key=lambda p: -p["benefit_s"]):
        click.echo(f"{p['engine']:<12} {p['program']:<20} {p['tier']:<5} {_size(p['bytes']):>8} {p['benefit_s']:>7.2f}s "
                   f"{p['ttl_left_s']:>6.1f}s {p['state']:<14} {(p['tool_call'] or '-'):<28} {p['reason']}")


@click.group("kv", invoke_without_command=True)
@click.option("--engine", default=None, help="Only this engine's pins.")
@click.option("--json", "json_out", is_flag=True, help="Machine output: one JSON document.")
@click.pass_context
def group(ctx: click.Context, engine: str | None, json_out: bool) -> None:
    """KV-cache pins held for inference engines: bytes, expected benefit, hit/miss counts."""
    if ctx.invoked_subcommand is None:
        _show_pins(_state(ctx, json_out), engine)
    elif json_out:
        _state(ctx, True)


@group.command("pins")
@click.option("--engine", default=None, help="Only this engine's pins.")
@click.option("--json", "json_out", is_flag=True, help="Machine output: one JSON document.")
@click.pass_context
def pins(ctx: click.Context, engine: str | None, json_out: bool) -> None:
    """Live pins with their reason, tier, bytes, expected benefit and time left."""
    _show_pins(_state(ctx, json_out), engine)


@group.command("durations")
@click.option("--limit", default=30, show_default=True, help="How many keys, most recently used first.")
@click.option("--json", "json_out", is_flag=True, help="Machine output: one JSON document.")
@click.pass_context
def durations(ctx: click.Context, limit: int, json_out: bool) -> None:
    """What agentd has learned of tool-call durations, per tool, command shape and agent."""
    state = _state(ctx, json_out)
    data = state.client.kind_get("kv", "durations", limit=str(limit))
    if state.json:
        click.echo(json.dumps(data, default=str))
        return
    click.echo(f"{data['observations']} observations ({data['learned_from_tracker']} from the tracker since start), "
               f"{data['keys']} keys, {data['running']} tool calls running")
    click.echo(f"{'KEY':<50} {'N':>6} {'P50':>8} {'P90':>8} {'MEAN':>8}")
    for d in data["durations"]:
        click.echo(f"{d['key'][:50]:<50} {d['n']:>6} {d['p50_s']:>7.2f}s {d['p90_s']:>7.2f}s {d['mean_s']:>7.2f}s")
