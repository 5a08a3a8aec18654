"""A py-spy raw profile (`stack;stack;… count` lines) summarised in a few lines of text.

py-spy samples Python frames only (--nonblocking): time spent inside a C extension (asyncpg's
protocol, hiredis, uvloop) is charged to the Python frame that called it, and time in the event
loop's own code (uvloop's C loop in the API, stdlib asyncio in arq's worker) shows up under the
loop's runner frames. Inclusive figures are lower bounds: a sample taken while a coroutine runs
from an event-loop callback often holds only the innermost frames, not the whole await chain.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# The first match, searching from the innermost frame outwards, names the library a sample is spent in.
_LIBRARIES = (
    ("asyncpg/", "asyncpg (driver; its Cython protocol included)"),
    ("structlog/", "structlog"),
    ("logging/", "stdlib logging"),
    ("redis/", "redis-py (hiredis included)"),
    ("arq/", "arq"),
    ("web3/", "web3"),
    ("eth_", "eth-* (signing, abi, rlp)"),
    ("coincurve", "coincurve"),
    ("aiohttp/", "aiohttp"),
    ("aiohappyeyeballs", "aiohttp"),
    ("httpx/", "httpx"),
    ("pydantic", "pydantic"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn (httptools included)"),
    ("json/", "json"),
    ("kiota/", "kiota"),
    ("api/", "kiota api"),
    ("jobs/", "kiota jobs"),
    ("threading", "threads (handing work to a thread pool)"),
)
_LOOP_RUNNERS = ("run_forever (", "Runner.run (", "run_until_complete (", "_run_once (", "Handle._run (")
_PLUMBING = ("(asyncio/", "(selectors.py", "(socket.py", "(ssl.py", "(contextlib.py", "(functools.py", "(<frozen")
_OURS = ("(kiota/", "(api/", "(jobs/")
_IDLE = ("EpollSelector.select (selectors.py",)


def _library(frames: list[str]) -> str:
    """The library of the innermost frame that is not the event loop's plumbing (a socket write is
    charged to asyncpg or aiohttp, whichever asked for it); the loop itself when nothing else is on top."""
    for frame in reversed(frames):
        if any(runner in frame for runner in _LOOP_RUNNERS):
            return "asyncio event loop itself (scheduling, callbacks, socket I/O)"
        if any(plumbing in frame for plumbing in _PLUMBING):
            continue
        for needle, name in _LIBRARIES:
            if needle in frame:
                return name
    return "other"


def _entry_point(frame: str) -> bool:
    """The process's own start (the CLI, arq's run): on every stack, so it says nothing."""
    return "(kiota/cli.py" in frame or frame.startswith("run_worker (")


def _function(frame: str) -> str:
    """`name (path/file.py:123)` → `name (path/file.py)`."""
    head, _, tail = frame.rpartition(":")
    return head + ")" if head and tail.endswith(")") else frame


def summarise_profile(path: Path, top: int = 12) -> str:
    if not path.exists():
        return f"{path.name}: no profile written"
    libraries: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = idle = threads = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count, frames = int(count_text), stack.split(";")
        if "Thread._bootstrap" in frames[0]:
            threads += count  # a thread pool (anyio's, or web3's lock helper), mostly waiting for work
            continue
        if any(idle in frames[-1] for idle in _IDLE):
            idle += count  # --nonblocking cannot always tell a thread blocked in epoll from a running one
            continue
        total += count
        libraries[_library(frames)] += count
        for function in {_function(f) for f in frames if any(o in f for o in _OURS) and not _entry_point(f)}:
            ours[function] += count
    if not total:
        return f"{path.name}: empty profile"
    lines = [
        f"{path.name}: {total} samples of the main thread running (200 Hz; left out: {idle} in the event "
        f"loop's select, {threads} in pool threads)",
        "  self time, by the library of the innermost frame:",
        *(f"    {n / total:6.1%}  {name}" for name, n in libraries.most_common(top)),
        "  inclusive time of Kiota's own functions (callers include callees):",
        *(f"    {n / total:6.1%}  {name}" for name, n in ours.most_common(top)),
    ]
    return "\n".join(lines)
