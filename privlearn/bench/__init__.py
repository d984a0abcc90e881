"""Benchmarks: each prints a table and writes JSON; never part of the test suite."""

from __future__ import annotations

import os
import platform
import resource
from datetime import datetime, timezone


def machine() -> dict:
    """Where a benchmark ran: recorded with every result, since this machine is shared."""
    return {
        "host_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
