"""Peak resident memory of a command (its whole process tree), sampled every 20 ms from /proc.

Prints ONE JSON object: the command, exit code, wall seconds, peak RSS in GB (the largest sum over
the process tree seen), and, when the command printed lines, the peak RSS between consecutive lines
of its stderr/stdout (``phases``: the line that opened the phase and the peak until the next one), so
a run's progress messages ("extracting the surface", ...) name the phase where memory peaked.
``--limit-gb`` kills the tree once it passes the limit (a shared machine must not be driven into
the kernel's OOM killer); the JSON then says ``killed_at_gb``.

    python benchmarks/peak_rss.py --limit-gb 8 -- dreamsmith generate "a hamburger" --model DIR --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        stack += _children(current)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-gb", type=float, default=None, help="kill the command above this RSS")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    state = {"peak": 0, "phase_peak": 0, "killed": None}
    phases: list[dict[str, object]] = []
    lock = threading.Lock()

    def read_lines() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stderr.write(line)
            text = line.strip()
            if not text:
                continue
            with lock:
                if phases:
                    phases[-1]["peak_rss_gb"] = round(state["phase_peak"] / 2**30, 3)
                phases.append({"line": text[:120], "at_s": round(time.perf_counter() - started, 2)})
                state["phase_peak"] = 0

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    while process.poll() is None:
        rss = tree_rss(process.pid)
        with lock:
            state["peak"] = max(state["peak"], rss)
            state["phase_peak"] = max(state["phase_peak"], rss)
        if args.limit_gb is not None and rss > args.limit_gb * 2**30 and state["killed"] is None:
            state["killed"] = round(rss / 2**30, 3)
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(args.interval)
    reader.join(timeout=5)
    if phases:
        phases[-1]["peak_rss_gb"] = round(state["phase_peak"] / 2**30, 3)
    print(json.dumps({
        "command": command,
        "returncode": process.returncode,
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_rss_gb": round(state["peak"] / 2**30, 3),
        "killed_at_gb": state["killed"],
        "limit_gb": args.limit_gb,
        "phases": [p for p in phases if p.get("peak_rss_gb", 0) > 0.5 or p is phases[-1]][-30:],
    }), flush=True)


if __name__ == "__main__":
    main()
