"""Whether the Monte Carlo's ONNX Runtime sessions spin-wait between parallel sections.

One policy, read when a session is built: ONNX Runtime spins by default, which is fastest on
an idle machine and slow on cores shared with other work (a spinning pool takes the core the
engine perturbs on and the helper thread draws on). The numbers never depend on it.
"""

from __future__ import annotations

import os

#: whether ONNX Runtime's intra-op threads spin-wait between parallel sections (ONNX Runtime's
#: default is to spin): True or False forces it (FTAUDIT_ORT_SPINNING=1 or 0), None decides per
#: session with ``spin_between_runs``. Between runs the engine perturbs the next row's weights
#: on this thread and draws the next sample's normals on a helper thread; a spinning pool takes
#: their cores when other work shares them. The numbers do not depend on it.
SPIN_BETWEEN_RUNS: bool | None = {"1": True, "0": False}.get(
    os.environ.get("FTAUDIT_ORT_SPINNING", "")
)
#: spin only while the machine's 1-minute load average is below this many per usable core.
#: Measured (benchmarks/spinning.py, LeNet on 2 cores, 2026-12-07): spinning 7% faster on an
#: idle machine, 33% slower beside two busy processes.
IDLE_LOAD_PER_CORE = 0.25


def spin_between_runs() -> bool:
    """Whether a new Monte Carlo session spins: as forced by ``SPIN_BETWEEN_RUNS``, else only on
    an idle machine (load average below ``IDLE_LOAD_PER_CORE`` per usable core)."""
    if SPIN_BETWEEN_RUNS is not None:
        return SPIN_BETWEEN_RUNS
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): the safe choice
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return load < IDLE_LOAD_PER_CORE * (cores or 1)
