"""Memory readings of the running process for the benchmarks (Linux ``/proc``): resident set and its peak."""

from __future__ import annotations

__all__ = ["reset_peak", "status_mb"]


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (``VmRSS``: resident now, ``VmHWM``: its peak); NaN if absent."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # pragma: no cover - not Linux: the peak then includes set-up
        pass
    return status_mb("VmRSS")
