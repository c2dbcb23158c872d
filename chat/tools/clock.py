"""The current-time tool."""

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .registry import tool


@tool
def current_time(timezone: str = "UTC") -> dict[str, str]:
    """Return the current date and time in a time zone.

    Args:
        timezone: IANA time zone name, for example "Europe/Paris" or "America/New_York".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        # ZoneInfo also accepts paths; only real zone names are answers.
        raise ValueError(f"unknown time zone '{timezone}'") from None
    if timezone not in available_timezones() and timezone != "UTC":
        raise ValueError(f"unknown time zone '{timezone}'")
    now = datetime.now(zone)
    return {
        "timezone": timezone,
        "iso": now.isoformat(timespec="seconds"),
        "local_time": now.strftime("%H:%M"),
        "weekday": now.strftime("%A"),
    }
