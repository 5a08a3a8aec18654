"""The machine, and bench/RESULTS.md rendered from bench/results.json.

Each run replaces the entries of the benchmarks it ran and keeps the others (`--only B2`
updates B2 alone); every entry says which run (date, command, machine) measured it.
Everything in RESULTS.md below the ANALYSIS_MARKER line is hand-written and kept as it is.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.model import Result, Row

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results.json"
ANALYSIS_MARKER = "<!-- Hand-written analysis below this line is kept when `python -m bench` rewrites the file. -->"


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    mhz = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu MHz")), "?")
    meminfo = Path("/proc/meminfo").read_text()
    kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": f"{model} @ {mhz} MHz",
        "memory": f"{kib / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _load() -> dict[str, Any]:
    if RESULTS_JSON.exists():
        data: dict[str, Any] = json.loads(RESULTS_JSON.read_text())
        return data
    return {"runs": {}, "benches": {}}


def record(run: dict[str, Any], results: list[Result]) -> dict[str, Any]:
    """Merge this run's results into results.json; returns the whole store."""
    store = _load()
    run_id = run["date"]
    store["runs"][run_id] = run
    for result in results:
        store["benches"][result.bench] = {"run": run_id, **asdict(result)}
    used = {entry["run"] for entry in store["benches"].values()}
    store["runs"] = {key: value for key, value in store["runs"].items() if key in used}
    RESULTS_JSON.write_text(json.dumps(store, indent=2, ensure_ascii=False) + "\n")
    return store


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def _fmt_met(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "**NO**")


def render(store: dict[str, Any]) -> str:
    benches = dict(sorted(store["benches"].items()))
    lines = [
        "# Kiota benchmarks — results",
        "",
        "Produced by `.venv/bin/python -m bench` (see bench/__main__.py). Performance is measured, not asserted;",
        "every ratio divides a figure by a baseline measured in the same run on the same machine.",
        "",
        "## Runs",
        "",
    ]
    for run_id, run in sorted(store["runs"].items()):
        m = run["machine"]
        lines += [
            f"- **{run_id}** — `{run['command']}`{' (quick mode)' if run.get('quick') else ''}, "
            f"{run['wall_s']:.0f} s wall",
            f"  - machine: nproc {m['nproc']}, {m['cpu']}, memory {m['memory']}, {m['kernel']}",
            f"  - software: Python {m['python']}; {run['software']}",
            f"  - code: {run.get('code', '?')}",
            f"  - background load: {run.get('background', '?')}",
        ]
    lines += [
        "",
        "## Figures",
        "",
        "| bench | what | figure | baseline (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in benches.values():
        for raw in entry["rows"]:
            row = Row(**raw)
            lines.append(
                f"| {row.bench} | {row.what} | {row.figure} | {row.baseline} | {_fmt_ratio(row.ratio)} | {row.goal} "
                f"| {_fmt_met(row.met)} |"
            )
    for name, entry in benches.items():
        lines += ["", f"## {name} — {entry['title']}", "", f"Run {entry['run']}. {entry['setup']}", ""]
        lines += [f"- {note}" for note in entry["notes"]]
    return "\n".join(lines) + "\n"


def write_markdown(text: str) -> None:
    kept = ""
    if RESULTS_MD.exists():
        old = RESULTS_MD.read_text()
        if ANALYSIS_MARKER in old:
            kept = old.split(ANALYSIS_MARKER, 1)[1]
    RESULTS_MD.write_text(text + "\n" + ANALYSIS_MARKER + (kept or "\n"))


def now_id() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
