"""How long will this tool call run, and, given that it has run for e seconds, how much longer?

An online, bounded-memory model of tool-call durations, learned from what the tracker sees
(toolcall.start -> toolcall.end) and from intents that declare a duration. Pure: no clock,
no kernel; the kind feeds it observations and persists `to_json()` in its state.

Keys, from fine to coarse (back-off):
    "<agent>|<shape>"   this agent's command shape, e.g. "swe-7|pytest -x tests/…"
    "<shape>"           every agent's, e.g. "pytest -x tests/…"
    "<family>:<program>" the program under its tool family, e.g. "Bash:pytest", "exec:git"
    "<family>"          the tool family (a trace's tool: Bash, Read, ...; "exec" in the kernel)
    "*"                 everything
and below all of them a log-normal prior for tools never seen. Each key holds a histogram
over log-spaced bins (8 per decade, 1 ms .. 3 h): bounded memory per key, keys evicted
least-recently-used beyond `max_keys`, old observations forgotten exponentially once a key
holds `max_weight` of them (agents' tools change as a task proceeds).

A key's distribution is its counts plus `backoff_weight` pseudo-observations drawn from its
parent's distribution (a Dirichlet prior centred on the parent): a shape seen twice leans
on its program and family, one seen fifty times speaks for itself.
"""

from __future__ import annotations

import math
import re
import shlex
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

LO_S = 1e-3
BINS_PER_DECADE = 8
DECADES = 7  # 1 ms .. 10,000 s
NBINS = BINS_PER_DECADE * DECADES
EDGES = tuple(LO_S * 10 ** (i / BINS_PER_DECADE) for i in range(NBINS + 1))
HI_S = EDGES[-1]

# ----------------------------------------------------------------------------- command shapes
_WRAPPERS = {"env", "nice", "nohup", "time", "stdbuf", "sudo", "timeout", "xargs", "exec", "command"}
_SUBCOMMAND_TOOLS = {"git", "pip", "pip3", "npm", "yarn", "pnpm", "cargo", "go", "docker", "kubectl", "uv", "poetry",
                     "conda", "apt", "apt-get", "make", "tox", "bundle", "dotnet", "gh", "brew", "rustup", "hatch", "nox"}
_INTERPRETERS = {"python", "python3", "python2", "node", "ruby", "perl", "bash", "sh", "zsh"}
_PREAMBLE = {"cd", "export", "source", ".", "set", "pushd", "popd", "unset", "alias", "ulimit"}
_SEGMENT_SPLIT = re.compile(r"\s*(?:&&|\|\||;|\n)\s*")
_MAX_SHAPE = 80


def _base(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _strip_version(name: str) -> str:
    return re.sub(r"\d+(\.\d+)*$", "", name) or name


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command, posix=True)
    except ValueError:  # an unbalanced quote in a truncated command: whitespace will do
        return command.split()


def main_argv(command: str) -> list[str]:
    """The argv of the command that does the work in a shell line: `cd x && source venv/bin/activate
    && python -m pytest -x tests/` -> [python, -m, pytest, -x, tests/]; the first stage of a pipe."""
    for segment in _SEGMENT_SPLIT.split(command.strip()):
        segment = segment.split("|", 1)[0].strip()
        words = _split(segment)
        if words and _base(words[0]) not in _PREAMBLE:
            return words
    return _split(command)[:1]


def program_and_rest(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Unwrap env/timeout/nice and interpreters: (`pytest`, [-x, tests/]) for
    `timeout 60 python3 -m pytest -x tests/`; (`python:setup.py`, [...]) for a script."""
    words = [w for w in argv if w]
    while words and ("=" in words[0] and not words[0].startswith("-") or _base(words[0]) in _WRAPPERS):
        head = _base(words[0])
        words = words[1:]
        if head == "timeout" and words and re.fullmatch(r"[\d.]+[smhd]?", words[0]):
            words = words[1:]
        while words and words[0].startswith("-") and head in _WRAPPERS:
            words = words[1:]
    if not words:
        return "", []
    prog = _strip_version(_base(words[0]))
    rest = list(words[1:])
    if prog in _INTERPRETERS:
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            return _strip_version(rest[1]), rest[2:]
        if rest and rest[0] == "-c":
            return f"{prog} -c", []
        if rest and rest[0].startswith("<<"):
            return f"{prog} <<", []
        if rest:
            return f"{prog}:{_base(rest[0])}", rest[1:]
    return prog, rest


def shape_of(argv: Sequence[str]) -> tuple[str, str]:
    """(program, shape): the program and its command shape: subcommand, short flags, the
    first path's top folder. `pytest -x tests/unit/test_a.py::t` -> ("pytest", "pytest -x tests/…");
    `git diff HEAD~1` -> ("git", "git diff"); `grep -rn foo src` -> ("grep", "grep -rn")."""
    prog, rest = program_and_rest(argv)
    if not prog:
        return "", ""
    parts = [prog]
    if prog in _SUBCOMMAND_TOOLS or prog.endswith(":manage.py"):
        sub = next((w for w in rest if not w.startswith("-")), None)
        if sub is not None and re.fullmatch(r"[a-z][a-z0-9_-]{0,24}", sub):
            parts.append(sub)
            rest = rest[rest.index(sub) + 1:]
    flags = sorted({w.split("=", 1)[0] for w in rest if w.startswith("-") and len(w.split("=", 1)[0]) <= 16})[:4]
    parts.extend(flags)
    path = next((w for w in rest if not w.startswith("-") and "*" not in w and ("/" in w or w.endswith(".py"))), None)
    if path is not None:
        top = path.lstrip("./").split("/", 1)[0].split("::", 1)[0]
        parts.append(f"{top}/…" if "/" in path.lstrip("./") else "….py" if top.endswith(".py") else top)
    return prog, " ".join(parts)[:_MAX_SHAPE]


def keys_for(agent: str | None, family: str, argv: Sequence[str] | None) -> list[str]:
    """The model's keys for one tool call, finest first (see the module docstring)."""
    prog, shape = shape_of(argv or ())
    keys = []
    if shape:
        if agent:
            keys.append(f"{agent}|{family}|{shape}")
        keys.append(f"{family}|{shape}")
        keys.append(f"{family}:{prog}")
    elif agent:
        keys.append(f"{agent}|{family}")
    keys.append(family)
    keys.append("*")
    return keys


def trace_keys(agent: str | None, tool: str, command: str | None) -> list[str]:
    """Keys for a trace record (tool Bash with a command string, or Read, Edit, ...)."""
    return keys_for(agent, tool, main_argv(command) if command else None)


# ----------------------------------------------------------------------------- distributions
def bin_of(x: float) -> int:
    if x <= LO_S:
        return 0
    if x >= HI_S:
        return NBINS - 1
    return min(NBINS - 1, int(math.log10(x / LO_S) * BINS_PER_DECADE))


def lognormal_pmf(median_s: float, sigma: float) -> list[float]:
    """A log-normal's mass in each bin (the prior for tools never seen)."""
    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((math.log(x) - math.log(median_s)) / (sigma * math.sqrt(2))))

    raw = [cdf(EDGES[i + 1]) - cdf(EDGES[i]) for i in range(NBINS)]
    raw[0] += cdf(EDGES[0])
    raw[-1] += 1 - cdf(EDGES[-1])
    total = sum(raw)
    return [r / total for r in raw]


@dataclass(frozen=True)
class Dist:
    """A duration distribution over the bins; mass spread log-uniformly inside a bin."""

    pmf: tuple[float, ...]
    weight: float = 0.0  # how many observations stand behind it (for display and confidence)

    def __post_init__(self):
        tail = [0.0] * (NBINS + 1)  # tail[i] = P(D > EDGES[i])
        for i in range(NBINS - 1, -1, -1):
            tail[i] = tail[i + 1] + self.pmf[i]
        object.__setattr__(self, "_tail", tail)

    def survival(self, x: float) -> float:
        """P(D > x)."""
        if x <= EDGES[0]:
            return 1.0
        if x >= HI_S:
            return 0.0
        i = bin_of(x)
        frac = math.log(EDGES[i + 1] / x) / math.log(EDGES[i + 1] / EDGES[i])
        return min(1.0, self._tail[i + 1] + self.pmf[i] * frac)

    def inverse_survival(self, target: float) -> float:
        """The x with P(D > x) = target (the smallest, for flat stretches)."""
        tail = self._tail
        if target >= tail[0]:
            return EDGES[0]
        lo, hi = 0, NBINS  # tail is non-increasing: find i with tail[i] > target >= tail[i+1]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if tail[mid] > target:
                lo = mid
            else:
                hi = mid
        i = lo
        p = self.pmf[i]
        if p <= 0:
            return EDGES[i + 1]
        frac = (target - tail[i + 1]) / p  # share of the bin's mass above x
        a, b = EDGES[i], EDGES[i + 1]
        return b * (a / b) ** frac

    def cdf(self, x: float) -> float:
        return 1.0 - self.survival(x)

    def quantile(self, q: float) -> float:
        return self.inverse_survival(1.0 - min(max(q, 0.0), 1.0))

    def mean(self) -> float:
        return sum(p * (EDGES[i + 1] - EDGES[i]) / math.log(EDGES[i + 1] / EDGES[i]) for i, p in enumerate(self.pmf))

    # --- given that it has already run for `elapsed` seconds
    def p_end_within(self, elapsed: float, t: float) -> float:
        """P(D <= elapsed + t | D > elapsed). Past everything ever seen, a Lindy tail: t / (elapsed + t)."""
        if t <= 0:
            return 0.0
        s = self.survival(elapsed)
        if s < 1e-9:
            return t / (max(elapsed, LO_S) + t)
        return max(0.0, min(1.0, (s - self.survival(elapsed + t)) / s))

    def remaining_quantile(self, elapsed: float, q: float) -> float:
        """The q-quantile of D - elapsed given D > elapsed."""
        s = self.survival(elapsed)
        if s < 1e-9:
            return max(elapsed, LO_S) * q / max(1e-9, 1 - q)  # the Lindy tail's quantile
        return max(0.0, self.inverse_survival(s * (1 - q)) - elapsed)

    def expected_remaining_capped(self, elapsed: float, cap: float, steps: int = 24) -> float:
        """E[min(D - elapsed, cap) | D > elapsed]: the seconds a pin with TTL `cap` is expected to be held."""
        if cap <= 0:
            return 0.0
        s0 = self.survival(elapsed)
        if s0 < 1e-9:
            e = max(elapsed, LO_S)
            return e * math.log1p(cap / e)  # integral of e/(e+x) from 0 to cap
        # integrate S(e+x)/S(e) over x in [0, cap] on a log grid (durations span decades)
        xs = [0.0] + [cap * 10 ** (-3 + 3 * k / steps) for k in range(steps + 1)]
        total = 0.0
        prev = 1.0
        for a, b in zip(xs, xs[1:]):
            cur = self.survival(elapsed + b) / s0
            total += (b - a) * (prev + cur) / 2
            prev = cur
        return total

    def expected_remaining(self, elapsed: float) -> float:
        return self.expected_remaining_capped(elapsed, HI_S)


class Histogram:
    """One key's counts over the bins; forgets old observations once it holds max_weight."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: list[float] | None = None):
        self.counts = counts if counts is not None else [0.0] * NBINS
        self.total = sum(self.counts)

    def add(self, duration: float, weight: float, max_weight: float) -> None:
        if self.total + weight > max_weight:
            keep = max(0.0, (max_weight - weight) / self.total) if self.total else 0.0
            self.counts = [c * keep for c in self.counts]
            self.total *= keep
        self.counts[bin_of(duration)] += weight
        self.total += weight


class DurationModel:
    def __init__(self, *, max_keys: int = 4096, max_weight: float = 200.0, backoff_weight: float = 4.0,
                 prior_median_s: float = 2.0, prior_sigma: float = 2.0):
        self.max_keys = max_keys
        self.max_weight = max_weight
        self.backoff_weight = backoff_weight
        self.prior_median_s = prior_median_s
        self.prior_sigma = prior_sigma
        self.prior = Dist(tuple(lognormal_pmf(prior_median_s, prior_sigma)))
        self.hists: OrderedDict[str, Histogram] = OrderedDict()
        self.observations = 0

    def observe(self, keys: Iterable[str], duration: float, weight: float = 1.0) -> None:
        """One finished tool call (or a declared duration, with a smaller weight) under every key."""
        if not (duration >= 0 and math.isfinite(duration)) or weight <= 0:
            return
        self.observations += 1
        for key in keys:
            hist = self.hists.get(key)
            if hist is None:
                hist = self.hists[key] = Histogram()
                if len(self.hists) > self.max_keys:
                    self._evict()
            else:
                self.hists.move_to_end(key)
            hist.add(duration, weight, self.max_weight)

    def _evict(self) -> None:
        for key in list(self.hists):  # least recently used first; never the coarse roots
            if "|" in key or ":" in key:
                del self.hists[key]
                return
        self.hists.popitem(last=False)

    def dist(self, keys: Sequence[str]) -> Dist:
        """The back-off blend along `keys` (finest first): prior -> "*" -> family -> ... -> finest."""
        pmf = list(self.prior.pmf)
        weight = 0.0
        for key in reversed(list(keys)):
            hist = self.hists.get(key)
            if hist is None or hist.total <= 0:
                continue
            k = self.backoff_weight
            pmf = [(c + k * p) / (hist.total + k) for c, p in zip(hist.counts, pmf)]
            weight = hist.total
        return Dist(tuple(pmf), weight)

    def known(self, key: str) -> float:
        hist = self.hists.get(key)
        return hist.total if hist else 0.0

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict:
        return {"version": 1, "bins_per_decade": BINS_PER_DECADE, "lo_s": LO_S, "nbins": NBINS,
                "observations": self.observations,
                "keys": {k: _sparse(h.counts) for k, h in self.hists.items()}}

    def load_json(self, doc: dict) -> int:
        """Take back a persisted model; a file for other bins (or garbage) is ignored. Returns keys loaded."""
        if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("nbins") != NBINS \
                or doc.get("bins_per_decade") != BINS_PER_DECADE:
            return 0
        loaded = 0
        for key, sparse in list((doc.get("keys") or {}).items())[-self.max_keys:]:
            counts = _dense(sparse)
            if isinstance(key, str) and counts is not None:
                self.hists[key] = Histogram(counts)
                loaded += 1
        self.observations = int(doc.get("observations") or 0)
        return loaded

    def summary(self, limit: int = 50) -> list[dict]:
        out = []
        for key, hist in list(self.hists.items())[::-1][:limit]:
            d = self.dist([key])
            out.append({"key": key, "n": round(hist.total, 1), "p50_s": round(d.quantile(0.5), 3),
                        "p90_s": round(d.quantile(0.9), 3), "mean_s": round(d.mean(), 3)})
        return out


def _sparse(counts: list[float]) -> dict[str, float]:
    return {str(i): round(c, 4) for i, c in enumerate(counts) if c > 1e-4}


def _dense(sparse) -> list[float] | None:
    if not isinstance(sparse, dict):
        return None
    counts = [0.0] * NBINS
    for i, c in sparse.items():
        try:
            idx, val = int(i), float(c)
        except (TypeError, ValueError):
            return None
        if not (0 <= idx < NBINS) or not (val >= 0 and math.isfinite(val)):
            return None
        counts[idx] = val
    return counts
