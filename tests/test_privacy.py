"""Privacy: the retention sweep and the opt-in redaction of stored text."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit import services
from audit.models import ChatSession, Event, EventType, Summary
from audit.redaction import redact_text
from audit.tasks import sessions_delete_expired

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("mail me at ada.l+x@example.co.uk now", "mail me at [email] now"),
        ("card 4111 1111 1111 1111 please", "card [card] please"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call [phone] or [phone]"),
        ("US style 555.123.4567", "US style [phone]"),
        # Left alone: not a card (Luhn), a date, a time, an IP address, short numbers, versions.
        ("ref 4111-1111-1111-1112", "ref 4111-1111-1111-1112"),
        ("on 2026-11-21 at 10:30", "on 2026-11-21 at 10:30"),
        ("host 192.168.1.1", "host 192.168.1.1"),
        ("order 12345, version 1.2.3, year 1999", "order 12345, version 1.2.3, year 1999"),
    ],
)
def test_redaction_masks_personal_data_and_leaves_the_rest(text, stored):
    assert redact_text(text) == stored


def new_session(**fields) -> ChatSession:
    return ChatSession.objects.create(id=uuid.uuid4(), anon_key="k", model="m", **fields)


def test_redaction_is_off_by_default():
    session = new_session()
    event = services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="ada@example.com")
    assert event.content == "ada@example.com"


def test_with_redaction_on_nothing_personal_is_stored(settings):
    settings.CHAT_REDACT_PII = True
    session = new_session()
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="I am ada@example.com")
    services.event_record(
        session_id=session.id,
        type=EventType.TOOL_CALL,
        content="lookup",
        data={"name": "lookup", "arguments": {"phone": "+44 20 7946 0958", "n": 3}},
    )
    stored = list(Event.objects.filter(session=session).order_by("seq"))
    assert stored[0].content == "I am [email]"
    assert stored[1].data == {"name": "lookup", "arguments": {"phone": "[phone]", "n": 3}}


def test_retention_deletes_old_sessions_with_their_events_and_summaries(settings):
    settings.CHAT_RETENTION_DAYS = 30
    old = new_session()
    services.event_record(session_id=old.id, type=EventType.USER_MESSAGE, content="long ago")
    Summary.objects.create(session=old, status="done", text="old")
    ChatSession.objects.filter(pk=old.pk).update(last_activity_at=timezone.now() - timedelta(days=31))
    recent = new_session()
    services.event_record(session_id=recent.id, type=EventType.USER_MESSAGE, content="lately")
    assert sessions_delete_expired.apply().get() == 1
    assert list(ChatSession.objects.values_list("id", flat=True)) == [recent.id]
    assert not Event.objects.filter(session_id=old.id).exists()
    assert not Summary.objects.filter(session_id=old.id).exists()


def test_retention_zero_keeps_everything(settings):
    settings.CHAT_RETENTION_DAYS = 0
    ancient = new_session()
    ChatSession.objects.filter(pk=ancient.pk).update(last_activity_at=timezone.now() - timedelta(days=3650))
    assert sessions_delete_expired.apply().get() == 0
    assert ChatSession.objects.filter(pk=ancient.pk).exists()
