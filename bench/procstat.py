"""CPU time per process from /proc, to say which process a benchmark was waiting on.

A snapshot maps pid → (command name, CPU seconds so far); the difference of two snapshots,
grouped by role, divided by the wall time between them, is how many cores each role used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

Snapshot = dict[int, tuple[str, float]]


def _read(pid: int) -> tuple[str, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    if name == "postgres":
        name = _postgres_role(pid)
    return name, (utime + stime) / _TICKS


def _postgres_role(pid: int) -> str:
    """A backend's title names its database: ours count as postgres, other databases' apart
    (the machine may be shared, e.g. with a test run)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "postgres"
    is_backend = "(" in title  # "postgres: 15/main: user db 127.0.0.1(5432) idle"
    return "postgres" if not is_backend or " kiota_bench_" in title else "postgres-other-db"


# Machine-wide counters ride in the snapshot under negative keys (never a pid): all CPUs' busy time,
# and the part of it spent in soft interrupts (loopback TCP is processed there, charged to no process).
_MACHINE = {-1: "machine busy", -2: "machine softirq"}


def _machine() -> Snapshot:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq + steal
    return {-1: (_MACHINE[-1], busy / _TICKS), -2: (_MACHINE[-2], softirq / _TICKS)}


def snapshot() -> Snapshot:
    found: Snapshot = _machine()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            read = _read(int(entry))
            if read is not None:
                found[int(entry)] = read
    return found


def cpu_by_role(before: Snapshot, after: Snapshot, roles: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds spent between the snapshots, by role: the pids in `roles` by their name,
    every other process by its command name (postgres, redis, anvil, or as /proc names it).

    A process that exited between the snapshots is not counted (its last figures are gone)."""
    spent: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if pid < 0:
            spent[name] = delta
            continue
        if delta <= 0:
            continue
        role = roles.get(pid) or _family(name)
        spent[role] = spent.get(role, 0.0) + delta
    return spent


def _family(name: str) -> str:
    return "redis" if name.startswith("redis") else name


def cores(spent: Mapping[str, float], wall: float, roles: tuple[str, ...]) -> str:
    """`api 0.95, postgres 0.61, …` in cores, the named roles first, then the rest, tiny ones left out."""
    if wall <= 0:
        return ""
    spent = dict(spent)
    machine = {name: spent.pop(name) for name in list(spent) if name in _MACHINE.values()}
    ordered = [r for r in roles if r in spent] + sorted(r for r in spent if r not in roles)
    parts = [f"{role} {spent[role] / wall:.2f}" for role in ordered if spent[role] / wall >= 0.01]
    total = sum(spent.values()) / wall
    text = ", ".join(parts) + f" (processes {total:.2f}"
    if machine:
        text += (
            f"; machine busy {machine[_MACHINE[-1]] / wall:.2f}, of which soft interrupts "
            f"{machine[_MACHINE[-2]] / wall:.2f}"
        )
    return text + f"; of {os.cpu_count()} cores)"


def background(seconds: float = 1.0) -> tuple[float, str]:
    """Cores used by everything but this process over `seconds` (before the run: is the machine quiet?)."""
    before = snapshot()
    time.sleep(seconds)
    spent = cpu_by_role(before, snapshot(), {os.getpid(): "harness"})
    for name in ("harness", *_MACHINE.values()):
        spent.pop(name, None)
    busy = sum(spent.values()) / seconds
    top = ", ".join(f"{name} {cpu / seconds:.2f}" for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1])[:4])
    return busy, top
