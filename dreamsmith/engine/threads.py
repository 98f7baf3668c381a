"""How many threads torch's CPU kernels use: the cores other processes leave free, followed during a run.

Two OpenMP threads beside another busy process on a 2-core machine collapse: a team's threads wait
for each other at every parallel region, and one of them keeps losing its core (a toy step 0.76 s
idle becomes 2.45 s; one thread takes 0.98 s). A passive wait policy avoids the collapse but costs
an idle run 1.7x (1.29 s a step: every region wakes sleeping threads). So the wait policy stays
OpenMP's default, and the thread count follows the load instead: the cores free when the run starts,
then, every ``FOLLOW_INTERVAL_S`` while it runs (``follow_load``, called at each step), the cores not
used by other processes. A count the user chose (``--threads``, ``OMP_NUM_THREADS``) is kept.
"""

from __future__ import annotations

import os
import sys
import time

from dreamsmith.errors import ConfigError

IDLE_SAMPLE_S = 0.1
"""How long the CPU counters are watched to see how many cores are idle."""

FOLLOW_INTERVAL_S = 2.0
"""How often a running job recounts the cores other processes leave free."""

_following: dict[str, float] | None = None
"""The counters at the last recount while the thread count follows the load; None: it does not."""


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def free_cores() -> int:
    """Cores idle over the last ``IDLE_SAMPLE_S`` seconds (at least 1, at most ``usable_cores()``)."""
    usable = usable_cores()
    before = _cpu_times()
    if before is None:
        return usable
    time.sleep(IDLE_SAMPLE_S)
    after = _cpu_times()
    total = after[1] - before[1] if after else 0
    if total <= 0:
        return usable
    idle_fraction = (after[0] - before[0]) / total
    return max(1, min(usable, round(idle_fraction * (os.cpu_count() or usable))))


def apply_thread_policy(threads: int | None = None) -> int:
    """Set the intra-op thread count (``threads``, else ``OMP_NUM_THREADS`` when the user set it, else
    the cores free now, then followed by ``follow_load``); returns the count.

    Called before torch is imported, the environment decides; afterwards torch is told directly."""
    global _following
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    _following = None
    if threads is None:
        preset = os.environ.get("OMP_NUM_THREADS", "")
        if preset.isdigit() and int(preset) > 0:
            threads = int(preset)
        else:
            threads = free_cores()
            _following = _counters()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def _counters() -> dict[str, float] | None:
    """Wall clock, this process's CPU seconds and the machine's (idle, total) jiffies now."""
    times = _cpu_times()
    if times is None:
        return None
    own = os.times()
    return {"wall": time.monotonic(), "own": own.user + own.system, "idle": times[0], "total": times[1]}


def cores_for_us(before: dict[str, float], after: dict[str, float], usable: int, cpus: int) -> int:
    """Threads between two ``_counters`` readings: the cores minus those other processes kept busy (the
    machine's busy cores less this process's own CPU use), at least 1, at most ``usable``."""
    total = after["total"] - before["total"]
    wall = after["wall"] - before["wall"]
    if total <= 0 or wall <= 0:
        return max(1, usable)
    busy = (1.0 - (after["idle"] - before["idle"]) / total) * cpus
    others = max(0.0, busy - (after["own"] - before["own"]) / wall)
    return max(1, min(usable, round(cpus - others)))


def follow_load() -> int | None:
    """Recount the cores other processes leave free (at most every ``FOLLOW_INTERVAL_S``) and give torch
    that many threads; a no-op unless ``apply_thread_policy`` chose the count. Returns the new count
    when it changed."""
    global _following
    if _following is None or "torch" not in sys.modules:
        return None
    now = _counters()
    if now is None or now["wall"] - _following["wall"] < FOLLOW_INTERVAL_S:
        return None
    threads = cores_for_us(_following, now, usable_cores(), os.cpu_count() or usable_cores())
    _following = now
    torch = sys.modules["torch"]
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return threads
