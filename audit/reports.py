"""Reports: figures over a period, from aggregate queries (never a loop over sessions)."""

import statistics
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDate

from .models import FEEDBACK, ChatSession, Event, EventType, Report, Summary
from .redaction import visitor_label

TOP_TOPICS = 10


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Return p50, p95 and p99 of the values (linear interpolation), None when there are none."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "p99": round(cuts[98], 3)}


TOP_SPENDERS = 20
_COST = Cast(KT("data__cost_usd"), DecimalField(max_digits=16, decimal_places=8))
# The part of a reply's cost spent by the call that summarized its cut history, on its own model.
_SIDE_MODEL = "data__context__summary_usage__model"
_SIDE_COST = Cast(KT("data__context__summary_usage__cost_usd"), DecimalField(max_digits=16, decimal_places=8))


def _usd(value: Any) -> float:
    return round(float(value or 0), 8)


def cost_figures(replies: QuerySet[Event]) -> dict[str, Any]:
    """Return what the replies cost: in all, by model, by day (UTC) and by the visitors who spent most.

    By model, each model is charged for its own calls: a reply's history
    summary (`context.summary_usage`, the fast model's) is split off its
    reply's model.
    """
    # The key present and not JSON null (SQLite casts a null to 0, PostgreSQL to NULL).
    priced = replies.filter(data__cost_usd__isnull=False).exclude(data__cost_usd=None).annotate(cost=_COST)
    own = priced.annotate(side=Coalesce(_SIDE_COST, Decimal(0)))
    by_model: dict[str, Decimal] = {}
    for row in own.values("data__model").annotate(total=Sum(F("cost") - F("side"))):
        by_model[row["data__model"] or "unknown"] = row["total"] or Decimal(0)
    sides = priced.exclude(**{f"{_SIDE_MODEL}__isnull": True}).annotate(side=_SIDE_COST)
    for row in sides.values(_SIDE_MODEL).annotate(total=Sum("side")):
        if row["total"]:
            model = row[_SIDE_MODEL] or "unknown"
            by_model[model] = by_model.get(model, Decimal(0)) + row["total"]
    by_day = priced.annotate(day=TruncDate("created_at")).values("day").annotate(total=Sum("cost")).order_by("day")
    by_visitor = (
        priced.values("session__user__username", "session__anon_key").annotate(total=Sum("cost")).order_by("-total")
    )
    return {
        "cost_usd": _usd(sum(by_model.values(), Decimal(0))),
        "cost_by_model": {model: _usd(total) for model, total in sorted(by_model.items(), key=lambda kv: -kv[1])},
        "cost_by_day": {row["day"].isoformat(): _usd(row["total"]) for row in by_day},
        "cost_by_visitor": {
            visitor_label(username=row["session__user__username"], anon_key=row["session__anon_key"]): _usd(
                row["total"]
            )
            for row in by_visitor[:TOP_SPENDERS]
        },
    }


def satisfaction_by_model(ratings: QuerySet[Event]) -> dict[str, dict[str, Any]]:
    """Return thumbs up and down per model, and the share up, counting the latest rating of each reply."""
    latest: dict[tuple[Any, str], tuple[str, str]] = {}
    rows = ratings.order_by("created_at", "seq").values_list(
        "session_id", "data__turn_id", "data__model", "data__rating"
    )
    for session_id, turn_id, model, rating in rows:
        latest[(session_id, turn_id)] = (model or "unknown", rating)
    counts: dict[str, Counter] = {}
    for model, rating in latest.values():
        counts.setdefault(model, Counter())[rating] += 1
    return {
        model: {
            "up": tally["up"],
            "down": tally["down"],
            "satisfaction": round(tally["up"] / (tally["up"] + tally["down"]), 4),
        }
        for model, tally in sorted(counts.items())
        if tally["up"] + tally["down"]
    }


def report_figures(*, start: datetime, end: datetime) -> dict[str, Any]:
    """Compute the figures of sessions started in [start, end) and of events recorded in it."""
    sessions = ChatSession.objects.filter(started_at__gte=start, started_at__lt=end)
    events = Event.objects.filter(created_at__gte=start, created_at__lt=end)
    totals = sessions.aggregate(
        sessions=Count("id"),
        users=Count("user", distinct=True),
        anonymous_visitors=Count("anon_key", distinct=True, filter=Q(user__isnull=True)),
        turns=Coalesce(Sum("turn_count"), 0),
        tool_calls=Coalesce(Sum("tool_call_count"), 0),
        errors=Coalesce(Sum("error_count"), 0),
    )
    totals["messages"] = events.filter(type__in=[EventType.USER_MESSAGE, EventType.ASSISTANT_MESSAGE]).count()
    durations = sorted(
        value
        for value in sessions.filter(duration_seconds__isnull=False).values_list("duration_seconds", flat=True)
        if value is not None
    )
    ttfts = sorted(
        value
        for value in events.filter(type=EventType.ASSISTANT_MESSAGE).values_list("data__ttft_ms", flat=True)
        if isinstance(value, int | float)
    )
    tokens_by_model = {
        row["model"] or "unknown": {"prompt_tokens": row["prompt"], "completion_tokens": row["completion"]}
        for row in sessions.values("model").annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    }
    tools = {}
    for row in (
        events.filter(type=EventType.TOOL_RESULT)
        .values("data__name")
        .annotate(calls=Count("id"), failed=Count("id", filter=Q(data__ok=False)))
    ):
        tools[row["data__name"] or "unknown"] = {
            "calls": row["calls"],
            "failed": row["failed"],
            "failure_rate": round(row["failed"] / row["calls"], 4),
        }
    errors_by_code = {
        row["data__code"] or "unknown": row["count"]
        for row in events.filter(type=EventType.ERROR).values("data__code").annotate(count=Count("id"))
    }
    # What writing the summaries of these sessions cost, failed attempts included.
    summary_spend = Summary.objects.filter(session__in=sessions).aggregate(
        cost=Coalesce(Sum("cost_usd"), Decimal(0)),
        prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("completion_tokens"), 0),
    )
    replies_cost = cost_figures(events.filter(type=EventType.ASSISTANT_MESSAGE))
    summaries = Summary.objects.filter(session__in=sessions, status="done")
    topics = Counter(
        topic.lower() for key_topics in summaries.values_list("key_topics", flat=True) for topic in key_topics or []
    )
    sentiment = {row["sentiment"]: row["count"] for row in summaries.values("sentiment").annotate(count=Count("id"))}
    return {
        **totals,
        "duration_seconds": percentiles(durations),
        "ttft_ms": percentiles(ttfts),
        "tokens_by_model": tokens_by_model,
        **replies_cost,
        "summary_cost_usd": _usd(summary_spend["cost"]),
        "summary_tokens": {
            "prompt_tokens": summary_spend["prompt_tokens"],
            "completion_tokens": summary_spend["completion_tokens"],
        },
        "total_cost_usd": _usd(Decimal(str(replies_cost["cost_usd"])) + summary_spend["cost"]),
        "feedback_by_model": satisfaction_by_model(events.filter(type=EventType.SYSTEM, data__kind=FEEDBACK)),
        "tools": tools,
        "errors_by_code": errors_by_code,
        "top_topics": [{"topic": topic, "sessions": count} for topic, count in topics.most_common(TOP_TOPICS)],
        "sentiment": sentiment,
    }


def report_build(*, start: datetime, end: datetime, kind: str) -> Report:
    """Compute and store the report of the period; building it again replaces its figures."""
    report, _ = Report.objects.update_or_create(
        kind=kind, period_start=start, period_end=end, defaults={"figures": report_figures(start=start, end=end)}
    )
    return report


def report_rows(figures: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Flatten a report's figures into (section, name, value) rows, for CSV."""
    rows: list[tuple[str, str, Any]] = []
    for section, value in figures.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                if isinstance(inner, dict):
                    rows.extend((f"{section}.{name}", key, item) for key, item in inner.items())
                else:
                    rows.append((section, name, inner))
        elif isinstance(value, list):
            rows.extend(
                (section, str(item.get("topic", n)), item.get("sessions", item)) for n, item in enumerate(value)
            )
        else:
            rows.append(("totals", section, value))
    return rows
