"""The audit trail in the Django admin: read-only sessions with their ordered events and summary."""

import csv
import json
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, F, OuterRef, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .exports import sessions_csv_stream, sessions_json_stream
from .models import FEEDBACK, ChatSession, Event, EventType, Report, ReportKind, Summary, SummaryStatus
from .redaction import visitor_label
from .reports import report_build, report_rows
from .selectors import sessions_text_match
from .timeline import timeline_page


def _same(fields: Any) -> list[str]:
    """The fields, read-only: every one shown is one a staff member may not change."""
    return list(fields)


class ReadOnlyMixin:
    """The record is written by the chat only; staff may view it, never change it here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class SummaryInline(ReadOnlyMixin, admin.StackedInline):
    model = Summary
    extra = 0  # no blank form for a session that has no summary yet
    fields = [
        "status",
        "title",
        "text",
        "key_topics",
        "action_items",
        "sentiment",
        "model",
        "updated_at",
        "error",
        "attempts",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    readonly_fields = _same(fields)
    can_delete = False


def _download(stream, extension: str, content_type: str) -> StreamingHttpResponse:
    """Stream an export as a file download (large exports never sit in memory whole)."""
    response = StreamingHttpResponse(stream, content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="sessions-{stamp}.{extension}"'
    return response


class CountFilter(admin.SimpleListFilter):
    """Yes/no on whether a session counter is above zero."""

    field = ""

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(**{f"{self.field}__gt": 0})
        if self.value() == "no":
            return queryset.filter(**{self.field: 0})
        return queryset


class HadErrorsFilter(CountFilter):
    title = "had errors"
    parameter_name = "had_errors"
    field = "error_count"


class HadToolCallsFilter(CountFilter):
    title = "had tool calls"
    parameter_name = "had_tool_calls"
    field = "tool_call_count"


class DeletedByOwnerFilter(admin.SimpleListFilter):
    title = "deleted by its owner"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


class FeedbackFilter(admin.SimpleListFilter):
    title = "feedback"
    parameter_name = "feedback"

    def lookups(self, request, model_admin):
        return [("up", "a reply rated up"), ("down", "a reply rated down"), ("none", "no feedback")]

    def queryset(self, request, queryset):
        ratings = Event.objects.filter(session=OuterRef("pk"), type=EventType.SYSTEM, data__kind=FEEDBACK)
        if self.value() in ("up", "down"):
            return queryset.filter(Exists(ratings.filter(data__rating=self.value())))
        if self.value() == "none":
            return queryset.exclude(Exists(ratings))
        return queryset


class SummaryStatusFilter(admin.SimpleListFilter):
    title = "summary"
    parameter_name = "summary"

    def lookups(self, request, model_admin):
        return [("none", "None yet"), *SummaryStatus.choices]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(summary__isnull=True)
        if self.value():
            return queryset.filter(summary__status=self.value())
        return queryset


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "started_at",
        "owner",
        "title_or_id",
        "status",
        "duration",
        "turns",
        "tokens",
        "cost",
        "tools",
        "errors",
    ]
    list_filter = [
        "status",
        "started_at",
        "llm_mode",
        "model",
        HadErrorsFilter,
        HadToolCallsFilter,
        SummaryStatusFilter,
        FeedbackFilter,
        DeletedByOwnerFilter,
        ("user", admin.RelatedOnlyFieldListFilter),
    ]
    # Message text and summaries are searched by get_search_results (full-text on PostgreSQL).
    search_fields = ["=id", "user__username", "=anon_key"]
    date_hierarchy = "started_at"
    list_select_related = ["user"]
    inlines = [SummaryInline]
    actions = ["summary_rerun", "export_json", "export_csv"]

    class Media:
        css = {"all": ["audit/admin.css"]}

    fields = [
        "id",
        "status",
        "owner",
        "model",
        "llm_mode",
        "title",
        "title_by_owner",
        "deleted_at",
        "started_at",
        "last_activity_at",
        "ended_at",
        "duration_seconds",
        "turn_count",
        "message_count",
        "tool_call_count",
        "error_count",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    readonly_fields = _same(fields)

    def changelist_view(self, request, extra_context=None):
        """Show what the listed sessions (as filtered: by user, by day...) add up to, above the list."""
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        changelist = context.get("cl")
        if changelist is not None:
            context["totals"] = changelist.queryset.aggregate(
                sessions=Count("id"),
                turns=Coalesce(Sum("turn_count"), 0),
                tokens=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0),
                summary_tokens=Coalesce(Sum(F("summary__prompt_tokens") + F("summary__completion_tokens")), 0),
                replies_cost_usd=Coalesce(Sum("cost_usd"), Decimal(0)),
                summaries_cost_usd=Coalesce(Sum("summary__cost_usd"), Decimal(0)),
            )
            totals = context["totals"]
            totals["cost_usd"] = totals["replies_cost_usd"] + totals["summaries_cost_usd"]
            totals["tokens"] += totals["summary_tokens"]
        return response

    def get_search_results(self, request, queryset, search_term):
        """Search message text, summaries and titles (full-text on PostgreSQL); an id or owner matches too."""
        if not search_term.strip():
            return queryset, False
        matched = sessions_text_match(queryset, search_term)
        by_field, _ = super().get_search_results(request, queryset, search_term)
        return matched | by_field, False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Add one page of the session's timeline (?events_page=N) below the summary."""
        extra_context = extra_context or {}
        session = self.get_object(request, object_id)
        if session is not None:
            extra_context["timeline"] = timeline_page(session_id=session.pk, number=request.GET.get("events_page"))
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Re-run the summary of the selected ended sessions")
    def summary_rerun(self, request, queryset) -> None:
        count = services.summaries_rerun(session_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(
            request, f"Queued {count} summar{'y' if count == 1 else 'ies'} (active sessions are skipped)."
        )

    @admin.action(description="Export the selected sessions as JSON")
    def export_json(self, request, queryset) -> StreamingHttpResponse:
        return _download(sessions_json_stream(queryset.values_list("id", flat=True)), "json", "application/json")

    @admin.action(description="Export the selected sessions as CSV (one row per event)")
    def export_csv(self, request, queryset) -> StreamingHttpResponse:
        return _download(sessions_csv_stream(queryset.values_list("id", flat=True)), "csv", "text/csv")

    def lookup_allowed(self, lookup: str, value: str, request=None) -> bool:
        """Also list one anonymous visitor's sessions (`?anon_key=`, the owner column's link)."""
        return lookup == "anon_key" or super().lookup_allowed(lookup, value, request)

    @admin.display(description="owner")
    def owner(self, session: ChatSession) -> str:
        """The owner (a hash for an anonymous visitor, see visitor_label), linked to all their sessions."""
        username = session.user.get_username() if session.user is not None else None
        label = visitor_label(username=username, anon_key=session.anon_key)
        if session.user_id is not None:
            return format_html('<a href="?user__id__exact={}">{}</a>', session.user_id, label)
        if session.anon_key:
            return format_html('<a href="?{}">{}</a>', urlencode({"anon_key": session.anon_key}), label)
        return label

    @admin.display(description="duration", ordering="duration_seconds")
    def duration(self, session: ChatSession) -> str:
        return f"{session.duration_seconds:.1f} s" if session.duration_seconds is not None else "-"

    @admin.display(description="turns", ordering="turn_count")
    def turns(self, session: ChatSession) -> int:
        return session.turn_count

    def get_queryset(self, request):
        # A session's cost and tokens: its replies' and its summary's (one-to-one: the join adds no rows).
        summary_tokens = F("summary__prompt_tokens") + F("summary__completion_tokens")
        return (
            super()
            .get_queryset(request)
            .annotate(
                total_cost_usd=F("cost_usd") + Coalesce(F("summary__cost_usd"), Decimal(0)),
                total_tokens=F("prompt_tokens") + F("completion_tokens") + Coalesce(summary_tokens, 0),
            )
        )

    @admin.display(description="cost (USD)", ordering="total_cost_usd")
    def cost(self, session: ChatSession) -> str:
        """The replies' cost and the summary's (annotated by get_queryset)."""
        total: Decimal = getattr(session, "total_cost_usd", session.cost_usd)
        return f"{total:.6f}"

    @admin.display(description="tools", ordering="tool_call_count")
    def tools(self, session: ChatSession) -> int:
        return session.tool_call_count

    @admin.display(description="errors", ordering="error_count")
    def errors(self, session: ChatSession) -> int:
        return session.error_count

    @admin.display(description="title", ordering="title")
    def title_or_id(self, session: ChatSession) -> str:
        return session.title or str(session.id)[:8]

    @admin.display(description="tokens", ordering="total_tokens")
    def tokens(self, session: ChatSession) -> int:
        """The replies' tokens and the summary's (annotated by get_queryset)."""
        chat_tokens = session.prompt_tokens + session.completion_tokens
        total: int = getattr(session, "total_tokens", chat_tokens)
        return total


class ReportPeriodForm(forms.Form):
    """A period of whole days, in UTC."""

    # A date picker in the browser; YYYY-MM-DD typed by hand also does.
    first_day = forms.DateField(help_text="included", widget=forms.DateInput(attrs={"type": "date"}))
    last_day = forms.DateField(help_text="included", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        cleaned = super().clean() or {}
        if cleaned.get("first_day") and cleaned.get("last_day") and cleaned["first_day"] > cleaned["last_day"]:
            raise forms.ValidationError("The first day must not come after the last day.")
        return cleaned

    def start(self) -> datetime:
        return datetime.combine(self.cleaned_data["first_day"], time.min, tzinfo=UTC)

    def end(self) -> datetime:
        return datetime.combine(self.cleaned_data["last_day"] + timedelta(days=1), time.min, tzinfo=UTC)


@admin.register(Report)
class ReportAdmin(ReadOnlyMixin, admin.ModelAdmin):
    class Media:
        css = {"all": ["audit/admin.css"]}

    def get_urls(self):
        return [
            path("build/", self.admin_site.admin_view(self.report_build_view), name="audit_report_build"),
            path(
                "<int:report_id>/csv/",
                self.admin_site.admin_view(self.report_csv),
                name="audit_report_csv",
            ),
            *super().get_urls(),
        ]

    def report_build_view(self, request) -> HttpResponse:
        """Build (or rebuild) the report of a period chosen by staff."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        today = timezone.now().date().isoformat()
        form = ReportPeriodForm(request.POST or None, initial={"first_day": today, "last_day": today})
        if request.method == "POST" and form.is_valid():
            report = report_build(start=form.start(), end=form.end(), kind=ReportKind.CUSTOM)
            self.message_user(request, f"Built {report}.")
            return redirect("admin:audit_report_change", report.pk)
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta}
        return TemplateResponse(request, "admin/audit/report/build.html", context)

    def report_csv(self, request, report_id: int) -> HttpResponse:
        """Download the report's figures as CSV (section, name, value)."""
        report = Report.objects.filter(pk=report_id).first()
        if report is None or not self.has_view_permission(request, report):
            raise Http404("No such report.")
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="report-{report.pk}.csv"'
        writer = csv.writer(response)
        writer.writerow(["period_start", "period_end", "section", "name", "value"])
        for section, name, value in report_rows(report.figures):
            writer.writerow([report.period_start.isoformat(), report.period_end.isoformat(), section, name, value])
        return response

    list_display = ["period_start", "period_end", "kind", "sessions", "turns", "errors", "created_at"]
    list_filter = ["kind"]
    date_hierarchy = "period_start"
    fields = ["kind", "period_start", "period_end", "created_at", "download", "figures_table"]
    readonly_fields = _same(fields)

    @admin.display(description="sessions")
    def sessions(self, report: Report) -> int:
        return report.figures.get("sessions", 0)

    @admin.display(description="turns")
    def turns(self, report: Report) -> int:
        return report.figures.get("turns", 0)

    @admin.display(description="errors")
    def errors(self, report: Report) -> int:
        return report.figures.get("errors", 0)

    @admin.display(description="CSV")
    def download(self, report: Report) -> str:
        return format_html(
            '<a href="{}">Download the figures as CSV</a>', reverse("admin:audit_report_csv", args=[report.pk])
        )

    @admin.display(description="figures")
    def figures_table(self, report: Report) -> str:
        """The figures as JSON, folded: the charts below show them first."""
        return format_html(
            "<details><summary>All figures (JSON)</summary><pre>{}</pre></details>",
            json.dumps(report.figures, indent=2),
        )
