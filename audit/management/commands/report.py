"""`manage.py report`: build and store the report of any period, and print its figures."""

import json
from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.models import ReportKind
from audit.reports import report_build


def _moment(text: str) -> datetime:
    """Parse an ISO date or date-time; a naive one is taken in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not an ISO date or date-time: {text!r}") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


class Command(BaseCommand):
    help = "Build the report of a period (default: the last 24 hours) and print its figures as JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--start", type=_moment, help="ISO date or date-time (inclusive)")
        parser.add_argument("--end", type=_moment, help="ISO date or date-time (exclusive; default now)")

    def handle(self, *args, start: datetime | None, end: datetime | None, **options) -> None:
        end = end or timezone.now()
        start = start or end - timedelta(days=1)
        if start >= end:
            raise CommandError("--start must be before --end")
        report = report_build(start=start, end=end, kind=ReportKind.CUSTOM)
        self.stdout.write(
            json.dumps(
                {"report": report.pk, "period": [start.isoformat(), end.isoformat()], "figures": report.figures},
                indent=2,
            )
        )
