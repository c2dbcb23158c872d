"""The system-status tool: CPU, memory, disk and uptime of the serving machine, via psutil."""

import time

import psutil

from .registry import tool


def _duration_human(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


@tool
def system_status() -> dict[str, float | str | int]:
    """Return the server's CPU load, memory and disk use, and uptime."""
    uptime = time.time() - psutil.boot_time()
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=0.1),
        "cpu_count": psutil.cpu_count() or 1,
        "memory_percent": memory.percent,
        "memory_available_mb": round(memory.available / 2**20),
        "disk_percent": psutil.disk_usage("/").percent,
        "uptime_seconds": int(uptime),
        "uptime_human": _duration_human(uptime),
    }
