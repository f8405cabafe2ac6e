"""`agentctl colocation jobs|explain` and the admission behind `agentctl run --class`.

Talks to the daemon only through ApiClient.kind_get/kind_post; imports nothing of the
daemon (not even agentd.colocation: its policy module pulls in PyYAML)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

KIND = "colocation"
JOB_COLUMNS = ("name", "class", "state", "pid", "gpus", "cpus", "predicted_bytes", "live_bytes", "guard", "position")


def _state(ctx: click.Context):
    return ctx.find_root().obj


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


def admit_and_wait(client, body: dict, json_out: bool = False, poll_s: float = 0.5) -> dict:
    """POST admit (this process becomes the job); while it is queued, wait and show its
    position. Returns the placed job (its "env" is what CMD must run with)."""
    job = client.kind_post(KIND, "admit", body)
    shown = None
    while job.get("state") == "queued":
        line = f"agentctl: job {job['name']} waits (position {job.get('position')}): {job.get('reason', '')}"
        if line != shown:
            click.echo(json.dumps({"queued": job}, default=str) if json_out else line, err=True)
            shown = line
        time.sleep(poll_s)
        rows = client.kind_get(KIND, "jobs", name=job["name"])
        if not rows:
            why = client.kind_get(KIND, "explain", name=job["name"])
            raise click.ClickException(f"job {job['name']} did not start: {why.get('reason', 'it ended')}")
        job = rows[0]
    return job


def read_model_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path} as a JSON model config: {exc}", param_hint="--model-config")
    if not isinstance(cfg, dict):
        raise click.BadParameter(f"{path} holds a JSON {type(cfg).__name__}, not an object", param_hint="--model-config")
    return cfg


def _human(n) -> str:
    if not isinstance(n, (int, float)):
        return "-" if n in (None, {}, []) else str(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


def _cell(key: str, value) -> str:
    if key in ("predicted_bytes",):
        return _human(value)
    if key == "live_bytes":
        return ",".join(f"{g}:{_human(b)}" for g, b in (value or {}).items()) or "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return "-" if value is None or value == "" else str(value)


def render_jobs(rows: list[dict]) -> str:
    if not rows:
        return "no jobs"
    cells = [[_cell(k, r.get(k)) for k in JOB_COLUMNS] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(JOB_COLUMNS)]
    lines = ["  ".join(k.upper().ljust(w) for k, w in zip(JOB_COLUMNS, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


@click.group(KIND)
def group() -> None:
    """Jobs sharing GPUs: where each runs, who waits and why (agentctl run --class)."""


@group.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    """Placed and queued jobs with their GPUs, cpus, predicted and live memory."""
    state = _state(ctx)
    rows = state.client.kind_get(KIND, "jobs")
    if as_json or state.json:
        _emit(rows)
    else:
        click.echo(render_jobs(rows))


@group.command("explain")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def explain(ctx: click.Context, job: str, as_json: bool) -> None:
    """Where JOB was placed, or why it waits (its position), with each GPU's numbers."""
    state = _state(ctx)
    data = state.client.kind_get(KIND, "explain", name=job)
    if as_json or state.json:
        _emit(data)
        return
    click.echo(f"{data['name']} ({data['class']}): {data['state']}"
               + (f", position {data['position']} in the queue" if data.get("position") else "")
               + (f", GPU {','.join(map(str, data['gpus']))}, cpus {data['cpus']}" if data.get("gpus") else ""))
    click.echo(f"  {data.get('reason', '')}")
    click.echo(f"  prediction: {data.get('source', '')}")
    for v in data.get("verdicts") or []:
        mark = "fits" if v.get("fits") else "no"
        extra = ""
        if v.get("slowdown"):
            extra = "  slowdown " + ", ".join(f"{k} {s:.2f}x" for k, s in v["slowdown"].items())
        click.echo(f"  GPU {v.get('gpu')}: {mark}: {v.get('reason', '')}{extra}")
    if data.get("guard") and data["guard"] != "normal":
        click.echo(f"  guard: {data['guard']}")


def main_for_tests(argv: list[str]) -> int:  # pragma: no cover - convenience
    try:
        group.main(argv, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_for_tests(sys.argv[1:]))
