"""How many threads torch's CPU kernels use: the cores actually free, with a passive OpenMP wait.

OpenMP's default wait policy spins idle threads for a while after each parallel region; beside
another busy process the spinning threads take the cores the working ones need, and a 2-thread run
slows down several-fold. A passive wait policy (set before torch loads) and a thread count taken from
the cores that are idle right now keep a run's speed close to its fair share of the machine.
"""

from __future__ import annotations

import os
import sys
import time

from dreamsmith.errors import ConfigError

IDLE_SAMPLE_S = 0.1
"""How long the CPU counters are watched to see how many cores are idle."""


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
    """Set the passive OpenMP wait policy and the intra-op thread count (``threads``, else
    ``OMP_NUM_THREADS`` when the user set it, else the cores free now); returns the count.

    Called before torch is imported, the environment decides; afterwards torch is told directly."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is None:
        preset = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(preset) if preset.isdigit() and int(preset) > 0 else free_cores()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
