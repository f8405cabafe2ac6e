"""The benchmark convention in one place: benchmarks/results/<name>.json holding
{"metrics": {name: number}, "params": {...}, "machine": "...", "date": "..."}."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, kernel {platform.release()}, load {load:.2f}"


def write_result(name: str, metrics: dict, params: dict, **extra) -> Path:
    """Write the file atomically; `extra` adds top-level keys (e.g. raw runs)."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"metrics": metrics, "params": params, "machine": machine(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    return path
