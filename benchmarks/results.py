"""What every benchmark script shares: facts about the machine, and writing its BENCHMARKS.md section."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

HEADER = "# Benchmarks\n"


def load_average() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def hardware() -> dict:
    """CPU model, usable cores and RAM in GiB, read from /proc."""
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    ram_kib = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    return {
        "cpu": found.group(1).strip() if found else platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": ram_kib / 1024**2,
    }


def write_section(path: Path, start: str, end: str, section: str, header: str = HEADER) -> None:
    """Replace the text from ``start`` to ``end`` in ``path`` by ``section`` (which carries both
    markers), or append it; a new file starts with ``header``."""
    text = path.read_text() if path.exists() else header
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text)
