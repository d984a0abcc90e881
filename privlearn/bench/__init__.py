"""Benchmarks: each prints a table and writes JSON; never part of the test suite."""

from __future__ import annotations

import json
import os
import platform
import resource
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


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


def cell_key(*parts) -> str:
    """The key of one run in a resumable benchmark's JSON."""
    return " | ".join(str(p) for p in parts)


def save_json(doc: dict, path: Path) -> None:
    """Write a results document atomically (an interrupted write leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def progress_bar(console: Console) -> Progress:
    """The bar of a benchmark's runs, with the last run's result beside it."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
    )
