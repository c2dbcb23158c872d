"""The audit record: chat sessions, their ordered events, their summaries."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class SessionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    ENDED = "ended", "Ended"


class EventType(models.TextChoices):
    USER_MESSAGE = "user_message", "User message"
    ASSISTANT_MESSAGE = "assistant_message", "Assistant message"
    TOOL_CALL = "tool_call", "Tool call"
    TOOL_RESULT = "tool_result", "Tool result"
    ERROR = "error", "Error"
    SYSTEM = "system", "System"


# The `kind` of a `system` event that records a visitor's rating of a reply.
FEEDBACK = "feedback"


class SummaryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ChatSession(models.Model):
    """One chat over one session id, owned by a user or an anonymous visitor."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="chat_sessions"
    )
    # The Django session key of an anonymous owner; empty when `user` is set.
    anon_key = models.CharField(max_length=40, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.ACTIVE)
    model = models.CharField(max_length=100, blank=True)
    llm_mode = models.CharField(max_length=16, blank=True, help_text="groq, openai or offline")
    title = models.CharField(max_length=200, blank=True)
    # The owner named the session: summaries no longer retitle it.
    title_by_owner = models.BooleanField(default=False)
    # The owner deleted it: gone from their list and their reach, kept for staff
    # (the retention setting deletes it for good, like any other session).
    deleted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_activity_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    # The seq the next event gets; bumped in the same transaction as the insert.
    next_seq = models.PositiveIntegerField(default=1)
    # Set while a turn runs, so a second tab or process answers `busy`; the
    # claim is free again once the claiming socket's lease has run out.
    turn_started_at = models.DateTimeField(null=True, blank=True)
    turn_lease = models.UUIDField(null=True, blank=True)
    # The channel of the process running the turn (its `stop` and resume requests go there).
    turn_owner = models.CharField(max_length=200, blank=True)
    # The last frame_seq of the session's finished turns; the next turn numbers its frames after it.
    frame_seq = models.PositiveBigIntegerField(default=0)
    # What the model is told of the turns that no longer fit its context budget:
    # a rolling summary of the events up to context_summary_seq, kept between turns.
    context_summary = models.TextField(blank=True)
    context_summary_seq = models.PositiveIntegerField(default=0)
    turn_count = models.PositiveIntegerField(default=0)
    message_count = models.PositiveIntegerField(default=0)
    tool_call_count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(
        "cost (USD)", max_digits=16, decimal_places=8, default=0, help_text="what the replies cost (LLM_PRICES)"
    )

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "chat session"
        indexes = [
            models.Index(fields=["status", "last_activity_at"], name="session_status_activity"),
            models.Index(fields=["user", "-started_at"], name="session_user_started"),
            models.Index(fields=["anon_key", "-started_at"], name="session_anon_started"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class SocketLease(models.Model):
    """A socket connected to a session, alive while its process renews the lease.

    "Connected" is derived from leases that expire rather than from a counter,
    so a socket whose cleanup never ran (a crashed process, a consumer that
    raised) stops counting by itself once its lease runs out.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="socket_leases")
    # Who holds the socket ("user:<id>" or "anon:<session key>") and from where:
    # the per-visitor and per-address socket limits count these.
    visitor = models.CharField(max_length=64)
    address = models.CharField(max_length=64, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["session", "expires_at"], name="lease_session_expires"),
            models.Index(fields=["visitor", "expires_at"], name="lease_visitor_expires"),
            models.Index(fields=["address", "expires_at"], name="lease_address_expires"),
            models.Index(fields=["expires_at"], name="lease_expires"),
        ]

    def __str__(self) -> str:
        return f"socket {self.id} on {self.session_id}"


class Event(models.Model):
    """One thing that happened in a session, at its place in the session's order."""

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32, choices=EventType.choices)
    content = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Replaced by a later turn (the user regenerated the reply or edited the message):
    # kept for the record, left out of the conversation and of what the user sees.
    superseded = models.BooleanField(default=False)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="event_session_seq_unique")]

    def __str__(self) -> str:
        return f"{self.session_id} #{self.seq} {self.type}"


class Summary(models.Model):
    """The summary of a session, written by a Celery worker after it ends."""

    session = models.OneToOneField(ChatSession, on_delete=models.CASCADE, related_name="summary")
    status = models.CharField(max_length=16, choices=SummaryStatus.choices, default=SummaryStatus.PENDING)
    title = models.CharField(max_length=200, blank=True)
    text = models.TextField(blank=True)
    key_topics = models.JSONField(default=list, blank=True)
    action_items = models.JSONField(default=list, blank=True)
    sentiment = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    # The last event seq the summary covers; a resumed session has newer ones.
    covers_seq = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # What writing it cost, over every attempt (failed ones and re-asks too): tokens reported
    # or, where the service sent no usage, estimated; USD at LLM_PRICES (models without a price add 0).
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(
        "cost (USD)", max_digits=16, decimal_places=8, default=0, help_text="what writing it cost (LLM_PRICES)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "summaries"

    def __str__(self) -> str:
        return self.title or f"summary of {self.session_id}"


class ReportKind(models.TextChoices):
    DAILY = "daily", "Daily"
    CUSTOM = "custom", "Custom period"


class Report(models.Model):
    """Figures over a period of sessions, built by a periodic task or on demand."""

    kind = models.CharField(max_length=16, choices=ReportKind.choices, default=ReportKind.CUSTOM)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(help_text="exclusive")
    figures = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "period_start", "period_end"], name="report_kind_period_unique")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} report {self.period_start:%Y-%m-%d %H:%M} – {self.period_end:%Y-%m-%d %H:%M}"
