"""Whether the Monte Carlo's ONNX Runtime sessions spin-wait between parallel sections.

One policy, read when a session is built: ONNX Runtime spins by default, which is fastest on
an idle machine and slow on cores shared with other work (a spinning pool takes the core the
engine perturbs on and the helper thread draws on). The numbers never depend on it.
"""

from __future__ import annotations

import os
import time

#: whether ONNX Runtime's intra-op threads spin-wait between parallel sections (ONNX Runtime's
#: default is to spin): True or False forces it (FTAUDIT_ORT_SPINNING=1 or 0), None decides per
#: session with ``spin_between_runs``. Between runs the engine perturbs the next row's weights
#: on this thread and draws the next sample's normals on a helper thread; a spinning pool takes
#: their cores when other work shares them. The numbers do not depend on it.
SPIN_BETWEEN_RUNS: bool | None = {"1": True, "0": False}.get(
    os.environ.get("FTAUDIT_ORT_SPINNING", "")
)
#: spin only while other processes keep fewer than this many cores busy per usable core.
#: Measured (benchmarks/spinning.py, LeNet on 2 cores, 2026-12-07): spinning 7% faster on an
#: idle machine, 33% slower beside two busy processes.
IDLE_LOAD_PER_CORE = 0.25
#: how long the other processes' CPU use is sampled (Linux ``/proc/stat``), and how long one
#: decision is reused by the sessions this process builds next
WINDOW_S = 0.1
REUSE_S = 30.0
_decided: tuple[float, bool] | None = None


def spin_between_runs(drawing_during_runs: bool = False) -> bool:
    """Whether a new Monte Carlo session spins: as forced by ``SPIN_BETWEEN_RUNS``; never when
    the runner draws on its helper thread while the session runs (``drawing_during_runs``: the
    analog pipeline's read noise, whose draws a spinning pool starves: LeNet with read noise,
    2 quiet cores, 69.1 ms per sample spinning against 59.0 not, benchmarks/spinning.py
    --read-noise 0.06, 2026-12-07); else only when other processes leave the cores idle
    (``IDLE_LOAD_PER_CORE`` per usable core).

    Other processes' use is what ``/proc/stat`` counts as busy over ``WINDOW_S`` minus this
    process's own CPU time, so neither this run's earlier work nor a load average that still
    remembers the last minute keeps an idle machine from spinning; without ``/proc/stat``,
    the 1-minute load average stands in (Windows: never spin, the safe choice)."""
    global _decided
    if SPIN_BETWEEN_RUNS is not None:
        return SPIN_BETWEEN_RUNS
    if drawing_during_runs:
        return False
    now = time.monotonic()
    if _decided is not None and now - _decided[0] < REUSE_S:
        return _decided[1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = other_processes_cores(WINDOW_S)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average either (Windows)
            return False
    spins = busy < IDLE_LOAD_PER_CORE * (cores or 1)
    _decided = (now, spins)
    return spins


def other_processes_cores(window: float) -> float | None:
    """Cores kept busy by other processes over the next ``window`` seconds: the machine's busy
    CPU time (``/proc/stat``) minus this process's, per second; None without ``/proc/stat``."""
    try:
        busy0, own0, t0 = cpu_counters()
        time.sleep(window)
        busy1, own1, t1 = cpu_counters()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-3)


def cpu_counters() -> tuple[float, float, float]:
    """(seconds of CPU the machine has been busy, of them this process's own, a monotonic
    clock), from ``/proc/stat``'s first line (all but idle and iowait) and ``os.times``."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return busy, sum(os.times()[:2]), time.monotonic()
