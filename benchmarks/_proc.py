"""Memory readings of the current process for the benchmarks (Linux ``/proc/self/status``)."""

from __future__ import annotations


def status_mb(field: str) -> float:
    """The ``/proc/self/status`` entry ``field`` (e.g. ``VmRSS``, ``VmHWM``, ``RssAnon``) in MiB; NaN if absent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
