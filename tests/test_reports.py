"""Reports: figures checked against hand-computed ones on a known data set."""

import csv
import hashlib
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit import services
from audit.models import ChatSession, Event, EventType, Report, ReportKind, Summary
from audit.reports import percentiles, report_build, report_figures
from audit.tasks import report_daily

pytestmark = pytest.mark.django_db(transaction=True)

DAY = datetime(2026, 1, 10, tzinfo=UTC)
# Anonymous visitors are named in the cost figures by a hash of their key (the key signs them in).
VISITOR_1_HASH = hashlib.sha256(b"visitor-1").hexdigest()[:10]


def session_at(started: datetime, *, model: str, user=None, anon_key: str = "") -> ChatSession:
    return ChatSession.objects.create(id=uuid.uuid4(), user=user, anon_key=anon_key, model=model, started_at=started)


def end_after(session: ChatSession, seconds: float) -> None:
    """End the session `seconds` after it started (after its events: a user message reopens a session)."""
    ended = session.started_at + timedelta(seconds=seconds)
    ChatSession.objects.filter(pk=session.pk).update(status="ended", ended_at=ended, duration_seconds=seconds)


def record(session: ChatSession, at: datetime, event_type: str, content: str = "", **data) -> None:
    event = services.event_record(session_id=session.id, type=event_type, content=content, data=data)
    Event.objects.filter(pk=event.pk).update(created_at=at)


@pytest.fixture
def known_sessions():
    """Two sessions inside DAY, one the day before."""
    user = get_user_model().objects.create_user("ana", password="pw")
    a = session_at(DAY + timedelta(hours=1), model="big", user=user)
    t = DAY + timedelta(hours=1, minutes=1)
    record(a, t, EventType.USER_MESSAGE, "trains to Paris?")
    record(a, t, EventType.TOOL_CALL, "current_time", name="current_time", call_id="1")
    record(a, t, EventType.TOOL_RESULT, "current_time", name="current_time", call_id="1", ok=True)
    record(a, t, EventType.ASSISTANT_MESSAGE, "yes", ttft_ms=100, usage={"prompt_tokens": 10, "completion_tokens": 5},
           model="big", cost_usd=0.0001)  # fmt: skip
    record(a, t, EventType.USER_MESSAGE, "when?")
    record(a, t, EventType.ASSISTANT_MESSAGE, "", ttft_ms=300, usage={"prompt_tokens": 20, "completion_tokens": 7},
           model="big", cost_usd=0.00025)  # fmt: skip
    record(a, t, EventType.ERROR, "down", code="llm_unavailable")
    # Feedback: the first reply rated down, then up (the latest counts); the second down.
    for turn_id, rating in [("t1", "down"), ("t1", "up"), ("t2", "down")]:
        record(a, t, EventType.SYSTEM, "", kind="feedback", turn_id=turn_id, rating=rating, model="big")
    end_after(a, 10)
    Summary.objects.create(
        session=a,
        status="done",
        key_topics=["Paris", "trains"],
        sentiment="positive",
        prompt_tokens=100,
        completion_tokens=40,
        cost_usd=Decimal("0.00003"),
    )

    b = session_at(DAY + timedelta(hours=5), model="small", anon_key="visitor-1")
    t = DAY + timedelta(hours=5, minutes=1)
    record(b, t, EventType.USER_MESSAGE, "time in Paris")
    record(b, t, EventType.TOOL_CALL, "current_time", name="current_time", call_id="2")
    record(b, t, EventType.TOOL_RESULT, "current_time", name="current_time", call_id="2", ok=False)
    record(b, t, EventType.ASSISTANT_MESSAGE, "sorry", ttft_ms=200, usage={"prompt_tokens": 4, "completion_tokens": 2},
           model="small", cost_usd=0.00002)  # fmt: skip
    # A reply on a model with no price: no cost, and not in the cost figures.
    record(b, t, EventType.ASSISTANT_MESSAGE, "free", ttft_ms=None, model="unpriced", cost_usd=None)
    record(b, t, EventType.SYSTEM, "great", kind="feedback", turn_id="t3", rating="up", model="small")
    end_after(b, 30)
    Summary.objects.create(session=b, status="done", key_topics=["paris"], sentiment="negative")

    before = session_at(DAY - timedelta(hours=2), model="big", anon_key="visitor-2")
    t = DAY - timedelta(hours=1)
    record(before, t, EventType.USER_MESSAGE, "yesterday")
    record(before, t, EventType.ASSISTANT_MESSAGE, "old reply", model="big", cost_usd=0.5)
    record(before, t, EventType.ERROR, "old", code="internal")
    end_after(before, 99)
    Summary.objects.create(
        session=before, status="done", key_topics=["old"], sentiment="neutral", cost_usd=Decimal("0.2")
    )


def test_report_figures_match_the_hand_computed_ones(known_sessions):
    figures = report_build(start=DAY, end=DAY + timedelta(days=1), kind=ReportKind.CUSTOM).figures
    assert figures == {
        "sessions": 2,
        "users": 1,
        "anonymous_visitors": 1,
        "turns": 3,
        "messages": 7,
        "tool_calls": 2,
        "errors": 1,
        # durations 10 and 30: linear interpolation between them
        "duration_seconds": {"p50": 20.0, "p95": 29.0, "p99": 29.8},
        # ttfts 100, 200, 300
        "ttft_ms": {"p50": 200.0, "p95": 290.0, "p99": 298.0},
        "tokens_by_model": {
            "big": {"prompt_tokens": 30, "completion_tokens": 12},
            "small": {"prompt_tokens": 4, "completion_tokens": 2},
        },
        # What the replies of the day cost, as recorded (the day before's 0.5 is not in it).
        "cost_usd": 0.00037,
        "cost_by_model": {"big": 0.00035, "small": 0.00002},
        "cost_by_day": {"2026-01-10": 0.00037},
        "cost_by_visitor": {"ana": 0.00035, f"anonymous {VISITOR_1_HASH}": 0.00002},
        # What writing the summaries of the day's sessions cost (the day before's 0.2 is not in it).
        "summary_cost_usd": 0.00003,
        "summary_tokens": {"prompt_tokens": 100, "completion_tokens": 40},
        "total_cost_usd": 0.0004,
        "tools": {"current_time": {"calls": 2, "failed": 1, "failure_rate": 0.5}},
        "errors_by_code": {"llm_unavailable": 1},
        "top_topics": [{"topic": "paris", "sessions": 2}, {"topic": "trains", "sessions": 1}],
        "sentiment": {"positive": 1, "negative": 1},
        "feedback_by_model": {
            "big": {"up": 1, "down": 1, "satisfaction": 0.5},
            "small": {"up": 1, "down": 0, "satisfaction": 1.0},
        },
    }


def test_costs_are_split_by_day_over_a_longer_period(known_sessions):
    figures = report_figures(start=DAY - timedelta(days=1), end=DAY + timedelta(days=1))
    assert figures["cost_by_day"] == {"2026-01-09": 0.5, "2026-01-10": 0.00037}
    assert figures["cost_usd"] == 0.50037
    assert (figures["summary_cost_usd"], figures["total_cost_usd"]) == (0.20003, 0.7004)
    assert figures["cost_by_visitor"][f"anonymous {hashlib.sha256(b'visitor-2').hexdigest()[:10]}"] == 0.5


def test_building_a_period_again_replaces_its_report(known_sessions):
    first = report_build(start=DAY, end=DAY + timedelta(days=1), kind=ReportKind.CUSTOM)
    second = report_build(start=DAY, end=DAY + timedelta(days=1), kind=ReportKind.CUSTOM)
    assert first.pk == second.pk and Report.objects.count() == 1


def test_an_empty_period_has_zero_figures():
    figures = report_build(start=DAY, end=DAY + timedelta(hours=1), kind=ReportKind.CUSTOM).figures
    assert (figures["sessions"], figures["turns"], figures["messages"]) == (0, 0, 0)
    assert figures["ttft_ms"] == {"p50": None, "p95": None, "p99": None}


def test_percentiles_of_one_value():
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}


def test_the_daily_task_reports_yesterday():
    report = Report.objects.get(pk=report_daily.apply().get())
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert (report.kind, report.period_start, report.period_end) == ("daily", midnight - timedelta(days=1), midnight)
    report_daily.apply()
    assert Report.objects.filter(kind="daily").count() == 1


def test_the_report_command_builds_any_period(known_sessions):
    out = io.StringIO()
    call_command("report", "--start", "2026-01-10", "--end", "2026-01-11", stdout=out)
    body = json.loads(out.getvalue())
    assert body["figures"]["sessions"] == 2
    assert body["period"] == ["2026-01-10T00:00:00+00:00", "2026-01-11T00:00:00+00:00"]
    assert Report.objects.get(pk=body["report"]).kind == "custom"
    with pytest.raises(CommandError):
        call_command("report", "--start", "2026-01-11", "--end", "2026-01-10", stdout=out)
    with pytest.raises(CommandError):
        call_command("report", "--start", "last tuesday", stdout=out)


def test_staff_see_reports_in_the_admin(client, known_sessions):
    report = report_build(start=DAY, end=DAY + timedelta(days=1), kind=ReportKind.CUSTOM)
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    assert f"/admin/audit/report/{report.pk}/change/" in client.get("/admin/audit/report/").content.decode()
    page = client.get(f"/admin/audit/report/{report.pk}/change/").content.decode()
    assert "&quot;failure_rate&quot;: 0.5" in page


def test_a_report_is_the_same_few_queries_for_few_or_many_sessions(known_sessions):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    period = {"start": DAY, "end": DAY + timedelta(days=1)}
    with CaptureQueriesContext(connection) as few:
        report_figures(**period)
    for n in range(20):
        extra = session_at(DAY + timedelta(hours=8, minutes=n), model=f"model-{n % 3}", anon_key=f"v{n}")
        record(extra, DAY + timedelta(hours=9), EventType.USER_MESSAGE, "hi")
        record(extra, DAY + timedelta(hours=9), EventType.TOOL_RESULT, "t", name=f"tool-{n % 4}", ok=n % 2 == 0)
        record(extra, DAY + timedelta(hours=9), EventType.ASSISTANT_MESSAGE, "yo", ttft_ms=n)
        end_after(extra, n + 1)
        Summary.objects.create(session=extra, status="done", key_topics=[f"t{n % 5}"], sentiment="neutral")
    with CaptureQueriesContext(connection) as many:
        figures = report_figures(**period)
    assert figures["sessions"] == 22
    assert len(few) == len(many) <= 15


def test_staff_download_a_report_as_csv(client, known_sessions):
    report = report_build(start=DAY, end=DAY + timedelta(days=1), kind=ReportKind.CUSTOM)
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    page = client.get(f"/admin/audit/report/{report.pk}/change/").content.decode()
    assert f"/admin/audit/report/{report.pk}/csv/" in page
    response = client.get(f"/admin/audit/report/{report.pk}/csv/")
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["period_start", "period_end", "section", "name", "value"]
    values = {(section, name): value for _, _, section, name, value in rows[1:]}
    assert values[("totals", "sessions")] == "2"
    assert values[("ttft_ms", "p95")] == "290.0"
    assert values[("tools.current_time", "failure_rate")] == "0.5"
    assert values[("top_topics", "paris")] == "2"
    client.force_login(get_user_model().objects.create_user("nobody", password="pw"))
    assert client.get(f"/admin/audit/report/{report.pk}/csv/").status_code == 302


def test_staff_build_a_report_for_any_period_from_the_admin(client, known_sessions):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    assert "/admin/audit/report/build/" in client.get("/admin/audit/report/").content.decode()
    response = client.post("/admin/audit/report/build/", {"first_day": "2026-01-10", "last_day": "2026-01-10"})
    report = Report.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/admin/audit/report/{report.pk}/change/")
    assert (report.period_start, report.period_end, report.kind) == (DAY, DAY + timedelta(days=1), "custom")
    assert report.figures["sessions"] == 2
    bad = client.post("/admin/audit/report/build/", {"first_day": "2026-01-11", "last_day": "2026-01-10"})
    assert "must not come after" in bad.content.decode() and Report.objects.count() == 1


def test_the_cost_of_a_history_summary_goes_to_the_model_that_wrote_it():
    """A reply's cost includes the fast model's call that summarized its cut history: by model, it is split off."""
    session = session_at(DAY + timedelta(hours=1), model="big", anon_key="v")
    t = DAY + timedelta(hours=1, minutes=1)
    record(session, t, EventType.USER_MESSAGE, "go on")
    side = {"model": "fast", "prompt_tokens": 400, "completion_tokens": 30, "estimated": False, "cost_usd": 0.0001}
    record(session, t, EventType.ASSISTANT_MESSAGE, "on", model="big", cost_usd=0.0004, context={"summary_usage": side})
    record(session, t, EventType.USER_MESSAGE, "and?")
    record(session, t, EventType.ASSISTANT_MESSAGE, "so", model="big", cost_usd=0.0002, context={"budget_tokens": 1})
    figures = report_figures(start=DAY, end=DAY + timedelta(days=1))
    assert figures["cost_by_model"] == {"big": 0.0005, "fast": 0.0001}
    assert figures["cost_usd"] == 0.0006
