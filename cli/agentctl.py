"""agentctl: control agentd from the shell.

It imports nothing of the daemon but the API client (agentd.api.client) and the pure
policy schema modules (agentd.policy.loader / schema), loaded only by the commands that
need them.

Exit codes: 0 ok, 1 failure (daemon error, refused, invalid policy), 2 usage.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from agentd.api.client import (
    DEFAULT_SOCKET,
    ApiClient,
    ApiClientError,
    DaemonNotRunning,
    parse_size,
)
from cli import render

UNIT_SOURCE = Path(__file__).resolve().parent.parent / "systemd" / "agentd.service"
# The unit that owns the agents' cgroup tree (why two units: its header comment).
TREE_UNIT_SOURCE = UNIT_SOURCE.with_name("agentd-tree.service")
LEVELS = ("debug", "info", "warn", "error")

EPILOG = """\b
Shell completion (click): add one line to your shell's start-up file:
  bash: eval "$(_AGENTCTL_COMPLETE=bash_source agentctl)"
  zsh:  eval "$(_AGENTCTL_COMPLETE=zsh_source agentctl)"
  fish: _AGENTCTL_COMPLETE=fish_source agentctl | source
or print the script with `agentctl completion bash|zsh|fish`.

\b
Exit codes: 0 ok, 1 failure, 2 usage.
"""


class State:
    def __init__(self, socket_path: str, json_out: bool):
        self.socket_path = socket_path
        self.json = json_out
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.socket_path)
        return self._client


pass_state = click.make_pass_decorator(State)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


json_option = click.option(
    "--json", "json_out", is_flag=True, expose_value=False, callback=_set_json,
    help="Machine output: one JSON document (NDJSON for streams).",
)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=None))


def report_error(state: State | None, e: ApiClientError) -> None:
    if state is not None and state.json:
        click.echo(json.dumps(e.to_json(), default=str), err=True)
        return
    prefix = "permission denied: " if e.status == 403 else ""
    field = f" (field: {e.field})" if e.field else ""
    click.echo(f"agentctl: {prefix}{e.message}{field}", err=True)
    if isinstance(e.details, list):
        for line in render.problems_lines(d for d in e.details if isinstance(d, dict)):
            click.echo(f"  {line}", err=True)


class AgentctlGroup(click.Group):
    """Turns API errors from any subcommand into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiClientError as e:
            report_error(ctx.find_object(State), e)
            ctx.exit(1)
        except BrokenPipeError:  # `agentctl events -f | head`: the reader is done
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            ctx.exit(0)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class DurationType(click.ParamType):
    name = "SECONDS"
    factors = {"s": 1, "m": 60, "h": 3600}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        factor = self.factors.get(text[-1:], None)
        number = text[:-1] if factor else text
        try:
            seconds = float(number) * (factor or 1)
        except ValueError:
            self.fail(f"expected seconds such as 90, 90s, 5m or 1h, got {value!r}", param, ctx)
        if seconds <= 0:
            self.fail("a duration must be positive", param, ctx)
        return seconds


SIZE = SizeType()
DURATION = DurationType()


@click.group(cls=AgentctlGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="AGENTD_SOCKET", default=DEFAULT_SOCKET,
              show_default=True, metavar="PATH", help="agentd's API socket (env AGENTD_SOCKET).")
@click.option("--json", "json_out", is_flag=True, help="Machine output for every command.")
@click.version_option(package_name="agentd", prog_name="agentctl", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, socket_path: str, json_out: bool) -> None:
    """Control agentd, the resource controller for AI agents and their tool calls."""
    ctx.obj = State(socket_path, json_out)


# --- status and top --------------------------------------------------------------------------


@main.command()
@json_option
@pass_state
def status(state: State) -> None:
    """Backends in use, kernel features found or missing (and why), policy, counters."""
    data = state.client.status()
    if state.json:
        emit_json(data)
    else:
        click.echo(status_summary(data))
        click.echo()
        click.echo(render.mapping(data))


def status_summary(data: dict) -> str:
    """systemctl-status-like head: state, pid, uptime, what runs, what is missing and why."""
    degraded = [str(d) for d in data.get("degraded") or []]
    mark = "●" if not degraded else "◐"
    state = "active (running)" if not degraded else "active (degraded: some kernel features are missing)"
    lines = [f"{mark} agentd {data.get('version', '')} - {state}",
             f"    pid {data.get('pid')}, up {data.get('uptime_s', 0):.0f} s, socket {data.get('socket', '')}",
             f"    agents {data.get('agents_live', 0)} live, tool calls {data.get('toolcalls_live', 0)} live, "
             f"policies: {', '.join(data.get('policies') or [])}"]
    lines += [f"    {line}" for line in data.get("lines") or [] if line not in degraded]
    caps = data.get("capabilities") or {}
    if caps.get("held") and not caps.get("all"):  # under the unit: what each one kept is for
        lines += [f"      {name}: {caps.get('why', {}).get(name, '')}" for name in caps["held"]]
    lines += [f"  ! {line}" for line in degraded]
    return "\n".join(lines)


AGENT_COLUMNS = ("name", "uid", "main_pid", "pid", "policy", "state", "toolcalls_live",
                 "tool_calls", "created")
CALL_COLUMNS = ("id", "agent", "name", "tool", "state", "pid", "rule", "limits", "memory_max",
                "peak_bytes", "memory_peak", "cpu_s", "wall_s", "started")


def _columns(rows: list[dict], preferred: tuple[str, ...]) -> list[str]:
    keys: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
    cols = [c for c in preferred if c in keys]
    return cols or (list(rows[0].keys())[:8] if rows else [])


def _snapshot(client: ApiClient, agent: str | None) -> dict:
    snap: dict[str, Any] = {"ts": time.time()}
    try:
        snap["status"] = client.status()
    except ApiClientError as e:
        if e.status != 403:  # a non-admin sees its own agents without the daemon's status
            raise
    agents = client.agents()
    snap["agents"] = [a for a in agents if agent is None or a.get("name") == agent]
    snap["tool_calls"] = client.tool_calls(agent=agent, live=True)
    return snap


def _render_top(snap: dict) -> str:
    head = f"agentd  {time.strftime('%H:%M:%S', time.localtime(snap['ts']))}  " \
           f"agents {len(snap['agents'])}  live tool calls {len(snap['tool_calls'])}"
    counters = (snap.get("status") or {}).get("counters")
    if isinstance(counters, dict) and counters:
        head += "\n" + "  ".join(f"{k} {render.cell(k, v)}" for k, v in counters.items())
    parts = [head, "", "AGENTS",
             render.table(snap["agents"], _columns(snap["agents"], AGENT_COLUMNS)), "",
             "LIVE TOOL CALLS",
             render.table(snap["tool_calls"], _columns(snap["tool_calls"], CALL_COLUMNS))]
    jobs = (((snap.get("status") or {}).get("kinds") or {}).get("colocation") or {}).get("jobs")
    if jobs:  # GPU jobs of the colocation kind
        parts += ["", "GPU JOBS", render.table(jobs, _columns(jobs, ("name", "class", "state", "gpus", "pid", "guard")))]
    return "\n".join(parts)


@main.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--interval", "-n", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--agent", "-a", help="Show this agent only.")
@json_option
@pass_state
def top(state: State, once: bool, interval: float, agent: str | None) -> None:
    """A live table of agents and their running tool calls, refreshed in place."""
    in_place = sys.stdout.isatty() and not once and not state.json
    if in_place:
        click.echo("\x1b[?25l", nl=False)  # hide the cursor while redrawing
    try:
        while True:
            snap = _snapshot(state.client, agent)
            if state.json:
                emit_json(snap)
            elif in_place:
                click.echo(_redraw(_render_top(snap)), nl=False)
            else:
                click.echo(_render_top(snap) + ("" if once else "\n"))
            if once:
                return
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        if in_place:
            click.echo("\x1b[?25h", nl=False)


def _redraw(text: str) -> str:
    """Overwrite the screen from the top, clipped to the terminal, without flicker."""
    cols, rows = shutil.get_terminal_size()
    lines = [line[:cols] for line in text.splitlines()][: max(1, rows - 1)]
    return "\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J"


# --- events ----------------------------------------------------------------------------------


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen.")
@click.option("--agent", "-a", help="Only this agent's events.")
@click.option("--level", "-l", type=click.Choice(LEVELS), default="info", show_default=True,
              help="Lowest level shown; `--follow --level warn` warns before anything is killed.")
@click.option("--limit", "-n", type=click.IntRange(0, 10_000), default=None,
              help="How many recent events to print first (default 100; 0 with --follow).")
@click.option("--retry", is_flag=True,
              help="With --follow: when agentd stops or restarts, wait for it and go on.")
@json_option
@pass_state
def events(state: State, follow: bool, agent: str | None, level: str, limit: int | None,
           retry: bool) -> None:
    """What agentd decided and why: the journal, optionally followed live."""
    def show(ev: dict) -> None:
        click.echo(json.dumps(ev, default=str) if state.json else render.event_line(ev))

    if not follow:
        for ev in state.client.recent_events(agent=agent, level=level, limit=limit):
            show(ev)
        return
    waiting = False
    try:
        while True:
            try:
                for ev in state.client.follow_events(agent=agent, level=level, limit=limit):
                    waiting = False
                    show(ev)
                    sys.stdout.flush()
            except DaemonNotRunning:
                if not retry:
                    raise
            if not retry:
                click.echo("agentctl: agentd closed the event stream", err=True)
                sys.exit(1)
            if not waiting:
                click.echo("agentctl: agentd is gone; waiting for it to come back", err=True)
                waiting = True
            limit = 0  # after a reconnect: only what happens from then on
            time.sleep(1.0)
    except KeyboardInterrupt:
        return


# --- run and intent --------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.option("--policy", "-p", help="The policy the agent runs under (default: the daemon's).")
@click.option("--name", "-N", help="The agent's name (default: chosen by agentd).")
@click.option("--class", "job_class", metavar="CLASS",
              help="Run COMMAND as a GPU job of this co-location class instead of as an agent.")
@click.option("--gpus", type=click.IntRange(1, 64), default=1, show_default=True, help="With --class: GPUs it needs.")
@click.option("--model-config", type=click.Path(dir_okay=False), help="With --class: the model's HF config.json.")
@click.option("--estimate-bytes", type=SIZE, help="With --class: its peak GPU memory per GPU (e.g. 20G).")
@click.option("--no-tiers", is_flag=True,
              help="Do not place COMMAND's memory under the daemon's tiers policy at launch.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@json_option
@pass_state
def run(state: State, policy: str | None, name: str | None, job_class: str | None, gpus: int,
        model_config: str | None, estimate_bytes: int | None, no_tiers: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND as a managed agent: agentctl registers itself, then becomes COMMAND.

    \b
    Example: agentctl run --name coder -- python my_agent.py
    With --class, COMMAND is a GPU job: agentd places this process in jobs/<name> on GPUs
    that fit it (or it waits its turn), then COMMAND runs with CUDA_VISIBLE_DEVICES set.
    \b
    Example: agentctl run --class training --estimate-bytes 20G -- python train.py
    If COMMAND cannot be started the exit code is 127 (not found) or 126 (not executable).
    \b
    Under a tiers policy, COMMAND's memory policy (bind, preferred, interleave) is set just
    before it starts, as the daemon's matching class says; one line on stderr names it.
    --no-tiers skips that. A class with `fallback: refuse` it cannot place: exit 2.
    """
    if job_class:
        from cli.colocation_commands import admit_and_wait, read_model_config

        if (model_config is None) == (estimate_bytes is None):
            raise click.UsageError("with --class give exactly one of --model-config FILE or --estimate-bytes SIZE")
        body: dict[str, Any] = {"class": job_class, "gpus": gpus}
        if name:
            body["name"] = name
        if model_config:
            body["model_config"] = read_model_config(model_config)
        else:
            body["estimate_bytes"] = estimate_bytes
        job = admit_and_wait(state.client, body, state.json)
        if state.json:
            click.echo(json.dumps(job, default=str), err=True)
        else:
            click.echo(f"agentctl: running {command[0]} as job {job['name']} (pid {os.getpid()}) on GPU "
                       f"{','.join(map(str, job.get('gpus') or []))}, cpus {job.get('cpus')}", err=True)
        os.environ.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
        os.environ["AGENTD_SOCKET"] = state.socket_path
        if not no_tiers:
            _place_memory(state, command, "jobs")
        _exec(command)
        return
    agent = state.client.register_agent(name=name, policy=policy)
    agent_name = str(agent.get("name", name or "?")) if isinstance(agent, dict) else str(agent)
    if state.json:
        click.echo(json.dumps(agent, default=str), err=True)
    else:
        click.echo(f"agentctl: running {command[0]} as agent {agent_name} (pid {os.getpid()}, "
                   f"policy {agent.get('policy', policy or 'default')})", err=True)
    os.environ["AGENTD_AGENT"] = agent_name
    os.environ["AGENTD_SOCKET"] = state.socket_path
    if isinstance(agent, dict) and agent.get("results_dir"):
        # Where agentd leaves a structured result per tool call (<pid>.json).
        os.environ["AGENTD_RESULTS_DIR"] = str(agent["results_dir"])
    if not no_tiers:
        _place_memory(state, command, "agents")
    _exec(command)


def _place_memory(state: State, command: tuple[str, ...], scope: str) -> None:
    """Ask the daemon which tiers class and mempolicy COMMAND gets (it holds the policy),
    then set it on this process, which exec turns into COMMAND (the policy survives exec).
    No tiers kind or no tiers policy: nothing, COMMAND runs unplaced."""
    exe = shutil.which(command[0]) or command[0]
    try:
        plan = state.client.kind_post("tiers", "launch_plan", {"argv": list(command), "scope": scope,
                                                                "exe": os.path.realpath(exe)})
    except ApiClientError as e:
        if e.status != 404:  # 404: the daemon has no tiers kind
            click.echo(f"agentctl: tiers: no launch plan ({e.message}); running {command[0]} unplaced", err=True)
        return
    if not isinstance(plan, dict) or not plan.get("class"):
        return  # no class matches (or no tiers policy): nothing to say
    try:
        from agentd.tiers.numa import place_for_exec
    except (ImportError, OSError) as e:  # no ctypes/libc here
        click.echo(f"agentctl: tiers: cannot set a memory policy here ({e}); running {command[0]} unplaced", err=True)
        return
    refused = place_for_exec(plan, lambda line: click.echo(f"agentctl: tiers: {line}", err=True))
    if refused is not None:
        sys.exit(refused)


def _exec(command: tuple[str, ...]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))  # same pid: the registered one
    except FileNotFoundError:
        click.echo(f"agentctl: cannot run {command[0]}: command not found", err=True)
        sys.exit(127)
    except PermissionError:
        click.echo(f"agentctl: cannot run {command[0]}: permission denied", err=True)
        sys.exit(126)


@main.command()
@click.option("--tool", "-t", help="The tool about to run, e.g. pytest.")
@click.option("--memory", "-m", type=SIZE, help="Memory it will need: 512M, 2G or bytes.")
@click.option("--cpu", "-c", type=click.FloatRange(min=0, min_open=True), help="CPUs it will use.")
@click.option("--duration", "-d", "duration_s", type=DURATION, help="Expected run time: 90, 5m.")
@click.option("--priority", "-p", type=click.Choice(["low", "normal", "high"]),
              help="Priority of the tool call.")
@click.option("--pids", type=click.IntRange(min=1), help="The most processes it may start.")
@json_option
@pass_state
def intent(state: State, tool: str | None, memory: int | None, cpu: float | None,
           duration_s: float | None, priority: str | None, pids: int | None) -> None:
    """Declare what this agent's next tool call needs; prints what was granted and clipped.

    Run it from inside the agent (a process under `agentctl run`): the agent is taken from
    the caller's pid.
    """
    body: dict[str, Any] = {}
    for key, value in (("tool", tool), ("memory", memory), ("cpu", cpu),
                       ("duration_s", duration_s), ("priority", priority), ("pids", pids)):
        if value is not None:
            body[key] = value
    if not body:
        raise click.UsageError("give at least one of --tool, --memory, --cpu, --duration, "
                               "--priority, --pids")
    result = state.client.declare_intent(body)
    if state.json:
        emit_json(result)
        return
    granted = result.get("granted") if isinstance(result, dict) else None
    clipped = None
    if isinstance(result, dict):
        clipped = result.get("clips", result.get("clipped"))
    if granted is None and clipped is None:
        click.echo(render.mapping(result))
        return
    shown = ", ".join(f"{k} {render.cell(k, v)}" for k, v in (granted or {}).items())
    click.echo(f"granted: {shown or 'nothing'}")
    if isinstance(clipped, dict):
        clipped = [{"field": k, **(v if isinstance(v, dict) else {"granted": v})}
                   for k, v in clipped.items()]
    for c in clipped or []:
        key = str(c.get("field", "?"))
        asked = render.cell(key, c.get("requested", c.get("asked")))
        got = render.cell(key, c.get("granted"))
        reason = f": {c['reason']}" if c.get("reason") else ""
        click.echo(f"clipped: {key} asked {asked}, granted {got}{reason}")
    if not clipped:
        click.echo("clipped: nothing")
    if isinstance(result, dict) and result.get("applies_to"):
        click.echo(f"applies to {result['applies_to']}")


# --- tool calls ------------------------------------------------------------------------------


EXPLAIN_KEYS = ("id", "agent", "name", "tool", "argv", "state", "outcome", "reason", "rule",
                "limits", "clips", "intent", "peak_bytes", "memory_peak", "cpu_s", "wall_s",
                "exit_code")


@main.command()
@click.argument("tool_call")
@json_option
@pass_state
def explain(state: State, tool_call: str) -> None:
    """Why each decision on TOOL_CALL (or GPU job) was taken, with the numbers."""
    try:
        data = state.client.explain(tool_call)
    except ApiClientError as e:
        if e.status != 404:
            raise
        try:  # not a tool call: perhaps a job of the colocation kind
            state.client.kind_get("colocation", "explain", name=tool_call)
        except ApiClientError:
            raise e from None
        from cli.colocation_commands import explain as job_explain

        click.get_current_context().invoke(job_explain, job=tool_call, as_json=state.json)
        return
    if state.json:
        emit_json(data)
        return
    decisions = data.get("decisions") if isinstance(data, dict) else None
    if not isinstance(decisions, list):
        click.echo(render.mapping(data))
        return
    call = data.get("tool_call")
    if isinstance(call, dict):
        brief = {k: call[k] for k in EXPLAIN_KEYS if k in call}
        click.echo(render.mapping(brief or call))
        click.echo("")
    click.echo(f"{len(decisions)} decision(s):")
    for d in decisions:
        if not isinstance(d, dict):
            click.echo(f"  {d}")
            continue
        ts = d.get("ts")
        when = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else ""
        head = " ".join(str(x) for x in (when, d.get("action") or d.get("kind"),
                                         f"[{d['rule']}]" if d.get("rule") else "") if x)
        click.echo(f"  {head}: {d.get('reason') or d.get('message', '')}")
        numbers = d.get("numbers") or d.get("data")
        if isinstance(numbers, dict):
            shown = {k: v for k, v in numbers.items() if v is not None and not isinstance(v, list)}
            if shown:
                click.echo("      " + "  ".join(f"{k}={render.cell(k, v)}" for k, v in shown.items()))


@main.command()
@click.argument("tool_call")
@click.option("--reason", "-r", help="Why: recorded in the journal.")
@json_option
@pass_state
def cancel(state: State, tool_call: str, reason: str | None) -> None:
    """Cancel a running tool call (its agent lives on)."""
    data = state.client.cancel(tool_call, reason)
    if state.json:
        emit_json(data)
    else:
        click.echo(render.mapping(data))


# --- policies --------------------------------------------------------------------------------


@main.group(cls=AgentctlGroup)
def policy() -> None:
    """Check, apply, read and compare YAML policy files."""


@policy.command("validate")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--quiet", "-q", is_flag=True, help="Print problems only.")
@json_option
@pass_state
def policy_validate(state: State, files: tuple[str, ...], quiet: bool) -> None:
    """Check FILES offline (no daemon): prints file:line: key: message for each problem."""
    try:
        from agentd.policy.loader import validate_file
    except ImportError as e:
        raise click.ClickException(f"policy validation is unavailable here ({e})") from None
    report = []
    for path in files:
        problems = validate_file(Path(path))
        report.append({"file": path, "valid": not problems,
                       "problems": [p.to_json() if hasattr(p, "to_json") else p for p in problems]})
        if state.json:
            continue
        for p in problems:
            click.echo(str(p))
        if not problems and not quiet:
            click.echo(f"{path}: valid")
    valid = all(r["valid"] for r in report)
    if state.json:
        emit_json({"valid": valid, "files": report})
    if not valid:
        sys.exit(1)


def _read(path: str) -> tuple[str, str]:
    try:
        return Path(path).read_text(encoding="utf-8"), os.path.basename(path)
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not UTF-8 text; expected a YAML policy file") from None


@policy.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@json_option
@pass_state
def policy_apply(state: State, file: str) -> None:
    """Apply FILE on the running daemon (root or the admin group)."""
    text, name = _read(file)
    data = state.client.policy_apply(text, name)
    if state.json:
        emit_json(data)
    else:
        click.echo(f"applied {file}")
        if isinstance(data, dict) and data:
            click.echo(render.mapping(data))


@policy.command("get")
@click.argument("name")
@json_option
@pass_state
def policy_get(state: State, name: str) -> None:
    """Print the policy NAME as the daemon holds it."""
    data = state.client.policy(name)
    if state.json:
        emit_json(data)
    elif isinstance(data, dict) and isinstance(data.get("text"), str):
        click.echo(data["text"].rstrip("\n"))
    else:
        click.echo(render.mapping(data))


@policy.command("list")
@json_option
@pass_state
def policy_list(state: State) -> None:
    """The policies loaded in the daemon."""
    data = state.client.policies()
    if state.json:
        emit_json(data)
    else:
        click.echo(render.table(data, _columns(data, ("name", "kind", "filename", "source",
                                                      "applied", "active"))))


@policy.command("diff")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@json_option
@pass_state
def policy_diff(state: State, file: str) -> None:
    """What applying FILE would change in the daemon's policy."""
    text, name = _read(file)
    data = state.client.policy_diff(text, name)
    if state.json:
        emit_json(data)
        return
    if isinstance(data, dict) and isinstance(data.get("diff"), str):
        click.echo(data["diff"].rstrip("\n") or "no change")
    elif isinstance(data, dict) and isinstance(data.get("old"), str) and isinstance(data.get("new"), str):
        lines = difflib.unified_diff(data["old"].splitlines(), data["new"].splitlines(),
                                     f"daemon/{data.get('name', name)}", file, lineterm="")
        click.echo("\n".join(lines) or "no change")
    else:
        click.echo(render.mapping(data))


# --- set-up ----------------------------------------------------------------------------------


def render_unit(source: str, agentd_exe: str) -> str:
    """The unit text with ExecStart's program pointing at this installation's agentd (its
    arguments, e.g. --cgroup-root, kept)."""
    out = []
    for line in source.splitlines():
        if line.startswith("ExecStart="):
            args = line.split("=", 1)[1].split(None, 1)[1:]
            line = f"ExecStart={' '.join([agentd_exe, *args])}"
        out.append(line)
    return "\n".join(out) + "\n"


def _write_unit(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def _find_agentd(explicit: str | None) -> str:
    if explicit:
        return os.path.abspath(explicit)
    beside = Path(sys.executable).parent / "agentd"  # the same venv as this agentctl
    if beside.exists():
        return str(beside)
    found = shutil.which("agentd")
    if found:
        return os.path.abspath(found)
    raise click.ClickException("cannot find the agentd executable; pass --exec PATH")


@main.command("install-service")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True,
              type=click.Path(file_okay=False), help="Where systemd reads units from.")
@click.option("--exec", "exec_path", help="The agentd executable (default: beside agentctl).")
@click.option("--dry-run", is_flag=True, help="Print the units instead of installing them.")
@json_option
@pass_state
def install_service(state: State, unit_dir: str, exec_path: str | None, dry_run: bool) -> None:
    """Install systemd/agentd.service and systemd/agentd-tree.service (run once, as root).

    agentd-tree.service owns the cgroup tree the agents live in, so that restarting agentd
    never has to put its new process into a cgroup that hands controllers to agents."""
    for source in (UNIT_SOURCE, TREE_UNIT_SOURCE):
        if not source.exists():
            raise click.ClickException(f"the unit file is missing: {source}")
    exe = _find_agentd(exec_path)
    text = render_unit(UNIT_SOURCE.read_text(encoding="utf-8"), exe)
    tree_text = TREE_UNIT_SOURCE.read_text(encoding="utf-8")  # installed as shipped
    if dry_run:
        click.echo(f"# {TREE_UNIT_SOURCE.name}\n{tree_text}\n# {UNIT_SOURCE.name}\n{text}", nl=False)
        return
    target = Path(unit_dir) / "agentd.service"
    tree_target = Path(unit_dir) / TREE_UNIT_SOURCE.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_unit(tree_target, tree_text)  # first: agentd.service Requires= it
        _write_unit(target, text)
    except PermissionError:
        raise click.ClickException(f"cannot write {target}: run `sudo agentctl install-service`") \
            from None
    systemd_running = Path("/run/systemd/system").is_dir()  # sd_booted(3)
    reloaded = False
    if systemd_running:
        reloaded = subprocess.run(["systemctl", "daemon-reload"], check=False).returncode == 0
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    result = {"unit": str(target), "tree_unit": str(tree_target), "exec": exe, "exec_start": exec_start,
              "systemd_running": systemd_running, "daemon_reloaded": reloaded}
    if state.json:
        emit_json(result)
        return
    click.echo(f"installed {target} (ExecStart={exec_start})")
    click.echo(f"installed {tree_target} (the agents' cgroup tree: `systemctl stop agentd-tree` ends every agent)")
    if reloaded:
        click.echo("systemd reloaded its units; start agentd with: systemctl enable --now agentd")
    elif systemd_running:
        click.echo("`systemctl daemon-reload` failed; run it, then: systemctl enable --now agentd")
    else:
        click.echo("systemd is not PID 1 here, so nothing was reloaded; on a host booted with "
                   "systemd run: systemctl daemon-reload && systemctl enable --now agentd")


@main.command()
@json_option
@pass_state
def schema(state: State) -> None:
    """Print the JSON Schema of policy files (for editors and CI)."""
    try:
        from agentd.policy.schema import json_schema
    except ImportError as e:
        raise click.ClickException(f"the policy schema is unavailable here ({e})") from None
    click.echo(json.dumps(json_schema(), indent=None if state.json else 2))


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@json_option
@pass_state
def completion(state: State, shell: str) -> None:
    """Print the shell completion script for SHELL (see the main help)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    source = cls(main, {}, "agentctl", "_AGENTCTL_COMPLETE").source()
    if state.json:
        emit_json({"shell": shell, "script": source})
    else:
        click.echo(source)


# --- commands from other modules -------------------------------------------------------------

try:
    from cli.gpu_commands import estimate, gpu
except ImportError:
    pass  # the GPU commands are optional
except Exception as e:  # a broken module must not take the whole CLI down
    print(f"agentctl: the gpu commands are unavailable: {e}", file=sys.stderr)
else:
    main.add_command(estimate)
    main.add_command(gpu)

# One `agentctl <kind>` group per policy kind (agentd.kinds.registry): the same loop the
# daemon, the loader and the server run over.
try:
    from agentd.kinds.registry import cli_groups

    for _group in cli_groups():
        main.add_command(_group)
except Exception as e:  # a broken kind's CLI must not take the whole CLI down
    print(f"agentctl: a policy kind's commands are unavailable: {e}", file=sys.stderr)

__all__ = ["main"]


if __name__ == "__main__":
    main(prog_name="agentctl")
