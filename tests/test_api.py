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


def test_the_api_only_reads_the_list_and_never_posts(client):
    assert client.post("/api/sessions/").status_code == 405
    assert client.delete("/api/sessions/").status_code == 405
    key = visitor_session_key(client)
    assert client.post(f"/api/sessions/{chat_session(anon_key=key).id}/").status_code == 405


def test_the_list_leaves_out_sessions_with_no_message(client):
    key = visitor_session_key(client)
    talked = chat_session(anon_key=key)
    chat_session(anon_key=key, messages=())
    assert [row["id"] for row in client.get("/api/sessions/").json()["sessions"]] == [str(talked.id)]


def test_the_owner_renames_a_session_and_summaries_keep_the_name(client):
    key = visitor_session_key(client)
    session = chat_session(anon_key=key, messages=("Plan a picnic", "Bring bread"))
    response = client.patch(
        f"/api/sessions/{session.id}/", {"title": "  Picnic\n plans "}, content_type="application/json"
    )
    assert response.status_code == 200 and response.json()["title"] == "Picnic plans"
    services.session_end(session_id=session.id)  # the summary (offline, in process) is written now
    session.refresh_from_db()
    assert session.summary.title == "Plan a picnic"
    assert (session.title, session.title_by_owner) == ("Picnic plans", True)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", "invalid_json"),
        ("[]", "invalid_title"),
        ('{"title": "   "}', "invalid_title"),
        ('{"title": 7}', "invalid_title"),
        ('{"title": "' + "x" * 201 + '"}', "invalid_title"),
        ('{"title": "nul \\u0000 here"}', "invalid_title"),
    ],
)
def test_a_bad_rename_is_a_400_saying_why(client, body, code):
    key = visitor_session_key(client)
    session = chat_session(anon_key=key)
    response = client.patch(f"/api/sessions/{session.id}/", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    session.refresh_from_db()
    assert session.title == "hi" and not session.title_by_owner


def test_only_the_owner_renames_or_deletes(client):
    visitor_session_key(client)
    foreign = chat_session(anon_key="someone-else")
    patched = client.patch(f"/api/sessions/{foreign.id}/", {"title": "mine now"}, content_type="application/json")
    assert patched.status_code == 404
    assert client.delete(f"/api/sessions/{foreign.id}/").status_code == 404
    foreign.refresh_from_db()
    assert (foreign.title, foreign.deleted_at) == ("hi", None)
    # Staff read any session but do not rename or delete it through the visitors' API.
    staff = get_user_model().objects.create_user("sam", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.delete(f"/api/sessions/{foreign.id}/").status_code == 404


def test_a_deleted_session_leaves_the_owners_reach_and_stays_for_staff(client):
    key = visitor_session_key(client)
    kept, deleted = chat_session(anon_key=key), chat_session(anon_key=key)
    assert client.delete(f"/api/sessions/{deleted.id}/").status_code == 204
    assert [row["id"] for row in client.get("/api/sessions/").json()["sessions"]] == [str(kept.id)]
    assert client.get(f"/api/sessions/{deleted.id}/").status_code == 404
    assert client.delete(f"/api/sessions/{deleted.id}/").status_code == 404
    deleted.refresh_from_db()
    assert deleted.deleted_at is not None and deleted.events.count() == 2
    with pytest.raises(services.SessionForbidden):
        services.session_open(session_id=deleted.id, user_id=None, anon_key=key, model="m", llm_mode="offline")
    staff = get_user_model().objects.create_superuser("sam", password="pw")
    client.force_login(staff)
    assert client.get(f"/api/sessions/{deleted.id}/").status_code == 200
    listed = client.get("/admin/audit/chatsession/?deleted=yes").content.decode()
    assert str(deleted.id) in listed and str(kept.id) not in listed


def test_renaming_and_deleting_need_the_csrf_token():
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    key = visitor_session_key(client)
    session = chat_session(anon_key=key)
    assert client.delete(f"/api/sessions/{session.id}/").status_code == 403
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    assert client.delete(f"/api/sessions/{session.id}/", headers={"X-CSRFToken": token}).status_code == 204


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
