"""The JSON API and the health check."""

import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from audit import services
from audit.models import ChatSession, EventType

pytestmark = pytest.mark.django_db(transaction=True)


def visitor_session_key(client) -> str:
    """Load the chat page, which gives the visitor a Django session, and return its key."""
    assert client.get("/").status_code == 200
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


def chat_session(anon_key: str = "", user=None, messages=("hi", "hello")) -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key=anon_key, user=user, model="m")
    for n, text in enumerate(messages):
        kind = EventType.USER_MESSAGE if n % 2 == 0 else EventType.ASSISTANT_MESSAGE
        services.event_record(session_id=session.id, type=kind, content=text, data={"n": n})
    return session


def test_the_chat_page_labels_the_offline_model(client):
    page = client.get("/").content.decode()
    assert 'data-llm-mode="offline"' in page
    assert "Offline demo model" in page


def test_the_list_holds_only_the_callers_sessions_newest_first(client):
    key = visitor_session_key(client)
    older = chat_session(anon_key=key)
    newer = chat_session(anon_key=key)
    chat_session(anon_key="someone-else")
    body = client.get("/api/sessions/").json()
    assert [row["id"] for row in body["sessions"]] == [str(newer.id), str(older.id)]
    row = body["sessions"][0]
    assert set(row) >= {"id", "status", "title", "model", "started_at", "ended_at", "duration_seconds", "summary"}
    assert row["ended_at"] is None and row["summary"] is None
    assert row["started_at"].endswith("+00:00")


def test_the_detail_shows_ordered_events_and_the_summary(client):
    key = visitor_session_key(client)
    session = chat_session(anon_key=key, messages=("Plan a picnic", "Bring bread"))
    services.session_end(session_id=session.id)
    body = client.get(f"/api/sessions/{session.id}/").json()
    assert body["status"] == "ended" and body["duration_seconds"] is not None
    assert [(e["seq"], e["type"], e["content"]) for e in body["events"]] == [
        (1, "user_message", "Plan a picnic"),
        (2, "assistant_message", "Bring bread"),
    ]
    assert body["events"][1]["data"] == {"n": 1}
    assert body["summary"]["title"] == "Plan a picnic"
    assert set(body["summary"]) == {"text", "title", "key_topics", "action_items", "sentiment", "model", "created_at"}


def test_someone_elses_session_is_404(client):
    visitor_session_key(client)
    foreign = chat_session(anon_key="someone-else")
    assert client.get(f"/api/sessions/{foreign.id}/").status_code == 404
    assert client.get(f"/api/sessions/{uuid.uuid4()}/").status_code == 404
    assert client.get("/api/sessions/not-a-uuid/").status_code == 404


def test_a_user_sees_their_sessions_and_staff_see_any(client):
    user = get_user_model().objects.create_user("lin", password="pw")
    staff = get_user_model().objects.create_user("sam", password="pw", is_staff=True)
    mine = chat_session(user=user)
    client.force_login(user)
    assert [row["id"] for row in client.get("/api/sessions/").json()["sessions"]] == [str(mine.id)]
    assert client.get(f"/api/sessions/{mine.id}/").status_code == 200
    client.force_login(staff)
    assert client.get("/api/sessions/").json()["sessions"] == []
    assert client.get(f"/api/sessions/{mine.id}/").status_code == 200


def test_the_api_only_reads(client):
    assert client.post("/api/sessions/").status_code == 405


def test_health_reports_each_part_and_the_offline_model(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["channel_layer"], body["llm_mode"]) == (
        "ok",
        "ok",
        "ok",
        "offline",
    )
    assert body["broker"] in ("ok", "in-process")
    assert "GROQ_API_KEY" in body["notice"]


def test_health_says_groq_when_a_key_is_set(client, fake_groq):
    assert client.get("/healthz").json()["llm_mode"] == "groq"


def test_health_is_503_when_the_broker_is_down(client, broker_down):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"].startswith("error")
