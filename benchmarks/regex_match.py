"""Policy `match` patterns: Python's re (backtracking) vs RE2 (linear time), side by side.

    python -m benchmarks.regex_match [--quick]

Normal: the default policy's kind of pattern against an ordinary argv (every exec pays it).
Pathological: `^(\\w+\\s?)+$` against 'a'*n + '!' (issue 8 item 7: a crafted argv held the
daemon 31 s): re doubles its time with each character, RE2 stays linear. re is run only up
to a time budget per match. Both through agentd's own matcher too (agentd.policy.patterns,
compiled once and cached). Writes benchmarks/results/regex_match.json.
"""

from __future__ import annotations

import argparse
import re
import time

from agentd.policy import patterns
from benchmarks.results_file import write_result

NORMAL = [
    ("pytest", r"(^|/)pytest\b", "python3 -m pytest tests/unit -x -q --maxfail=1"),
    ("claude", r"^claude$", "claude"),
    ("long argv", r"(^|/)(cargo|rustc)\b", "bash -c " + "x" * 4000 + " cargo build"),
]
PATHOLOGICAL = r"^(\w+\s?)+$"


def _time(fn, repeat: int) -> float:
    """Best per-call time in seconds over `repeat` calls (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a lower time budget for re")
    args = ap.parse_args()
    repeat = 200 if args.quick else 2000
    budget_s = 0.5 if args.quick else 3.0

    rows, metrics = [], {}
    for label, pattern, text in NORMAL:
        py, r2 = re.compile(pattern), patterns.compile_pattern(pattern)
        t_re = _time(lambda: py.search(text), repeat)
        t_re2 = _time(lambda: r2.search(text), repeat)
        t_agentd = _time(lambda: patterns.search(pattern, text), repeat)
        rows.append((f"normal: {label}", len(text), t_re, t_re2, t_agentd))
        key = label.replace(" ", "_")
        metrics[f"normal_{key}_re_us"] = round(t_re * 1e6, 3)
        metrics[f"normal_{key}_re2_us"] = round(t_re2 * 1e6, 3)
        metrics[f"normal_{key}_agentd_us"] = round(t_agentd * 1e6, 3)

    py, r2 = re.compile(PATHOLOGICAL), patterns.compile_pattern(PATHOLOGICAL)
    re_stopped_at = None
    for n in (12, 16, 18, 20, 22, 24, 26, 1_000, 100_000):
        text = "a" * n + "!"
        t_re = None
        if re_stopped_at is None:
            t_re = _time(lambda: py.search(text), 1)
            if t_re > budget_s:
                re_stopped_at = n  # each further character doubles it: not run beyond
        t_re2 = _time(lambda: r2.search(text), 20 if n > 10_000 else repeat)
        t_agentd = _time(lambda: patterns.search(PATHOLOGICAL, text), 20 if n > 10_000 else repeat)
        rows.append((f"pathological n={n}", len(text), t_re, t_re2, t_agentd))
        if t_re is not None:
            metrics[f"pathological_n{n}_re_s"] = round(t_re, 6)
        metrics[f"pathological_n{n}_re2_us"] = round(t_re2 * 1e6, 3)
    metrics["pathological_re_over_budget_at_n"] = re_stopped_at or 0

    print(f"{'case':28} {'input':>7} {'re':>14} {'re2':>12} {'agentd (re2)':>14}")
    for case, size, t_re, t_re2, t_agentd in rows:
        shown = "not run" if t_re is None else (f"{t_re:.3f} s" if t_re >= 0.01 else f"{t_re * 1e6:.2f} us")
        print(f"{case:28} {size:>7} {shown:>14} {t_re2 * 1e6:>9.2f} us {t_agentd * 1e6:>11.2f} us")
    path = write_result("regex_match", metrics,
                        {"quick": args.quick, "repeat": repeat, "re_budget_s": budget_s,
                         "pathological_pattern": PATHOLOGICAL,
                         "normal": [{"label": l, "pattern": p, "input_chars": len(t)} for l, p, t in NORMAL]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
