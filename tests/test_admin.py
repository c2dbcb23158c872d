"""The audit trail in the Django admin."""

import csv
import hashlib
import io
import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from audit import services
from audit.models import ChatSession, EventType, Summary

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    client.force_login(get_user_model().objects.create_superuser("root", password="pw"))
    return client


def recorded_session(text: str) -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="a" * 32, model="m", llm_mode="offline")
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content=text)
    services.event_record(
        session_id=session.id,
        type=EventType.TOOL_CALL,
        content="current_time",
        data={"call_id": "c1", "name": "current_time", "arguments": {"timezone": "UTC"}},
    )
    services.event_record(
        session_id=session.id,
        type=EventType.ASSISTANT_MESSAGE,
        content=f"answer to {text}",
        data={"strategy": {"name": "tool_heavy", "model": "main", "reason": "it mentions 'time'"}},
    )
    return session


def test_staff_see_sessions_listed(staff_client):
    session = recorded_session("hello admin")
    services.session_end(session_id=session.id)
    page = staff_client.get("/admin/audit/chatsession/").content.decode()
    row = page[page.index(f"{session.id}/change/") :]
    row = row[: row.index("</tr>")]
    assert "hello admin" in row  # the title, from the summary
    assert ">Ended<" in row


def test_admin_pages_ask_for_no_favicon(staff_client):
    """Each admin page names an empty icon, so browsers do not ask for /favicon.ico (a 404 every page)."""
    session = recorded_session("icon")
    for page in (
        staff_client.get("/admin/"),
        staff_client.get("/admin/audit/chatsession/"),
        staff_client.get(f"/admin/audit/chatsession/{session.id}/change/"),
        Client().get("/admin/login/"),
    ):
        assert page.status_code == 200
        html = page.content.decode()
        assert html.count('<link rel="icon" href="data:,">') == 1
        assert "LLM-Backer" in html  # still the project's admin, title and header


def test_a_session_page_shows_its_events_in_order_and_the_summary(staff_client):
    session = recorded_session("in order please")
    services.session_end(session_id=session.id)
    page = staff_client.get(f"/admin/audit/chatsession/{session.id}/change/").content.decode()
    events = page[page.index("User message") :]
    positions = [events.index(text) for text in ("Tool call", "&quot;timezone&quot;", "answer to in order please")]
    assert positions == sorted(positions)
    assert page.index("Offline extractive summary") < page.index("User message")
    assert "strategy <b>tool_heavy</b> on main: it mentions &#x27;time&#x27;" in page


def test_a_reply_shows_its_figures_in_words(staff_client):
    session = recorded_session("figures")
    services.event_record(
        session_id=session.id,
        type=EventType.ASSISTANT_MESSAGE,
        content="partial",
        data={
            "model": "big",
            "ttft_ms": 120,
            "duration_ms": 2400,
            "usage": {"prompt_tokens": 30, "completion_tokens": 5},
            "rounds": 2,
            "stopped": True,
            "stop_reason": "client_gone",
        },
    )
    services.event_record(
        session_id=session.id,
        type=EventType.ASSISTANT_MESSAGE,
        content="after a cut",
        data={
            "model": "big",
            "usage": {"prompt_tokens": 900, "completion_tokens": 40},
            "context": {"summary_usage": {"model": "fast", "prompt_tokens": 400, "completion_tokens": 30}},
            "cost_usd": 0.00125,
        },
    )
    page = staff_client.get(f"/admin/audit/chatsession/{session.id}/change/").content.decode()
    assert "big · first token 120 ms · 2.4 s · 30 + 5 tokens · 2 rounds · stopped (client_gone)" in page
    assert "big · 900 + 40 tokens · 400 + 30 to summarize the history (fast) · $0.001250" in page


def test_a_long_session_timeline_is_paginated(staff_client):
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="p" * 32, model="m")
    for n in range(1, 251):
        services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content=f"message number {n}.")
    url = f"/admin/audit/chatsession/{session.id}/change/"
    first = staff_client.get(url).content.decode()
    assert "events 1 to 100 of 250" in first
    assert "message number 100." in first and "message number 101." not in first
    assert "?events_page=2#timeline" in first
    last = staff_client.get(url, {"events_page": 3}).content.decode()
    assert "events 201 to 250 of 250" in last
    assert "message number 250." in last and "message number 200." not in last


def test_search_finds_message_text_and_filters_by_status(staff_client):
    wanted = recorded_session("zebra crossing")
    other = recorded_session("giraffe")
    services.session_end(session_id=other.id)
    found = staff_client.get("/admin/audit/chatsession/", {"q": "zebra"}).content.decode()
    assert f"{wanted.id}/change/" in found and f"{other.id}/change/" not in found
    active = staff_client.get("/admin/audit/chatsession/", {"status__exact": "active"}).content.decode()
    assert f"{wanted.id}/change/" in active and f"{other.id}/change/" not in active
    everything = staff_client.get("/admin/audit/chatsession/").content.decode()
    assert f"{wanted.id}/change/" in everything and f"{other.id}/change/" in everything


def test_a_session_without_a_summary_shows_no_blank_summary_form(staff_client):
    session = recorded_session("no summary yet")
    page = staff_client.get(f"/admin/audit/chatsession/{session.id}/change/").content.decode()
    assert "Summary: #1" not in page and "summary-0" not in page


def test_the_record_is_read_only(staff_client):
    session = recorded_session("keep me")
    assert staff_client.get("/admin/audit/chatsession/add/").status_code == 403
    assert staff_client.get(f"/admin/audit/chatsession/{session.id}/delete/").status_code == 403
    response = staff_client.post(f"/admin/audit/chatsession/{session.id}/change/", {"title": "changed"})
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.title == "keep me"


def test_non_staff_are_sent_to_the_login_page(client):
    client.force_login(get_user_model().objects.create_user("visitor", password="pw"))
    response = client.get("/admin/audit/chatsession/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_summary_filter_separates_summarized_sessions(staff_client):
    summarized = recorded_session("summarize me")
    services.session_end(session_id=summarized.id)
    pending = recorded_session("still chatting")
    done = staff_client.get("/admin/audit/chatsession/", {"summary": "done"}).content.decode()
    assert f"{summarized.id}/change/" in done and f"{pending.id}/change/" not in done
    none = staff_client.get("/admin/audit/chatsession/", {"summary": "none"}).content.decode()
    assert f"{pending.id}/change/" in none and f"{summarized.id}/change/" not in none


def run_action(staff_client, action: str, sessions):
    return staff_client.post(
        "/admin/audit/chatsession/",
        {"action": action, "_selected_action": [str(s.id) for s in sessions]},
    )


def test_export_json_streams_every_event_of_the_selected_sessions(staff_client):
    chosen = [recorded_session('first, "quoted"\nline'), recorded_session("second")]
    recorded_session("not selected")
    response = run_action(staff_client, "export_json", chosen)
    assert response.streaming and response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="sessions-')
    body = json.loads(b"".join(response.streaming_content))
    assert {row["id"] for row in body} == {str(s.id) for s in chosen}
    for row in body:
        assert [e["seq"] for e in row["events"]] == [1, 2, 3]
        assert row["events"][1]["data"]["arguments"] == {"timezone": "UTC"}
    assert body[0]["events"][0]["content"] == 'first, "quoted"\nline'


def test_export_csv_has_one_row_per_event(staff_client):
    chosen = [recorded_session("a, b\nc"), recorded_session("d")]
    response = run_action(staff_client, "export_csv", chosen)
    assert response.streaming and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 6
    assert {row["session_id"] for row in rows} == {str(s.id) for s in chosen}
    first = next(row for row in rows if row["content"] == "a, b\nc")
    assert (first["seq"], first["type"], first["owner"]) == (
        "1",
        "user_message",
        "anonymous " + hashlib.sha256(b"a" * 32).hexdigest()[:10],
    )


def test_rerun_rewrites_the_summary_of_ended_sessions_only(staff_client):
    ended = recorded_session("ended one")
    services.session_end(session_id=ended.id)
    active = recorded_session("still open")
    assert Summary.objects.get(session=ended).attempts == 1
    response = run_action(staff_client, "summary_rerun", [ended, active])
    assert response.status_code == 302
    summary = Summary.objects.get(session=ended)
    assert (summary.status, summary.attempts) == ("done", 2)
    assert Summary.objects.filter(session=ended).count() == 1
    assert not Summary.objects.filter(session=active).exists()


def test_the_list_takes_the_same_queries_for_5_or_50_sessions(staff_client):
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def add_sessions(count: int) -> None:
        for n in range(count):
            owner = get_user_model().objects.create_user(f"user{ChatSession.objects.count()}") if n % 2 else None
            session = recorded_session(f"topic {n}")
            ChatSession.objects.filter(pk=session.pk).update(user=owner)
            services.session_end(session_id=session.id)

    add_sessions(5)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get("/admin/audit/chatsession/").status_code == 200
    add_sessions(45)
    with CaptureQueriesContext(connection) as many:
        page = staff_client.get("/admin/audit/chatsession/").content.decode()
    assert page.count("/change/") >= 50
    assert len(few) == len(many)


def test_filters_for_errors_tool_calls_and_owner(staff_client):
    from django.contrib.auth import get_user_model

    with_error = recorded_session("went wrong")
    services.event_record(session_id=with_error.id, type=EventType.ERROR, content="x", data={"code": "internal"})
    quiet = ChatSession.objects.create(id=uuid.uuid4(), anon_key="b" * 32, model="m")
    owned = recorded_session("mine")
    ChatSession.objects.filter(pk=owned.pk).update(user=get_user_model().objects.create_user("ana"))

    def listed(**query) -> set[str]:
        page = staff_client.get("/admin/audit/chatsession/", query).content.decode()
        return {str(s.id) for s in (with_error, quiet, owned) if f"{s.id}/change/" in page}

    assert listed(had_errors="yes") == {str(with_error.id)}
    assert listed(had_tool_calls="no") == {str(quiet.id)}
    assert listed(had_tool_calls="yes") == {str(with_error.id), str(owned.id)}
    owner = get_user_model().objects.get(username="ana")
    assert listed(user__id__exact=owner.pk) == {str(owned.id)}
    assert listed(model__exact="m") == {str(with_error.id), str(quiet.id), str(owned.id)}


def test_postgresql_search_is_full_text_and_indexed(staff_client):
    from django.db import connection

    from audit.selectors import sessions_text_match

    from .conftest import on_postgres, service_missing

    if not on_postgres():
        service_missing("full-text search and its indexes are PostgreSQL's")
    zebras = recorded_session("Two zebras were crossing")
    recorded_session("giraffe")
    found = staff_client.get("/admin/audit/chatsession/", {"q": "zebra cross"}).content.decode()
    assert f"{zebras.id}/change/" in found and found.count("/change/") == 1
    # The planner can answer the message search from the index.
    query = sessions_text_match(ChatSession.objects.all(), "zebra")
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SET enable_seqscan = on")
    assert "event_content_fts" in plan


def test_the_list_filters_by_any_date_range(staff_client):
    from datetime import UTC, datetime

    january = recorded_session("january")
    march = recorded_session("march")
    ChatSession.objects.filter(pk=january.pk).update(started_at=datetime(2026, 1, 15, tzinfo=UTC))
    ChatSession.objects.filter(pk=march.pk).update(started_at=datetime(2026, 3, 15, tzinfo=UTC))
    page = staff_client.get(
        "/admin/audit/chatsession/", {"started_at__gte": "2026-01-01T00:00Z", "started_at__lt": "2026-02-01T00:00Z"}
    ).content.decode()
    assert f"{january.id}/change/" in page and f"{march.id}/change/" not in page
    drilled = staff_client.get("/admin/audit/chatsession/", {"started_at__year": 2026, "started_at__month": 3})
    assert f"{march.id}/change/" in drilled.content.decode()


def test_the_timeline_shows_a_regenerated_turn_marked_superseded(staff_client):
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="r" * 32, model="m")
    record = services.event_record
    record(session_id=session.id, type=EventType.USER_MESSAGE, content="which way north?")
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="Up, I think.")
    record(
        session_id=session.id,
        type=EventType.USER_MESSAGE,
        content="which way north?",
        data={"resend": "regenerate"},
        supersede=True,
    )
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="Follow the compass needle.")
    page = staff_client.get(f"/admin/audit/chatsession/{session.id}/change/").content.decode()
    assert page.count('class="event-user_message superseded"') == 1
    assert page.count('class="event-assistant_message superseded"') == 1
    assert "Up, I think." in page and "Follow the compass needle." in page
    assert '<span class="resend">regenerate</span>' in page
