"""Feedback on replies: a thumb up or down (and a comment) recorded as an event, shown back, filtered, reported."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from audit import services
from audit.models import ChatSession, Event, EventType
from chat.protocol import FrameError, frame_parse

from .conftest import ChatClient, events_of
from .test_browser import ASSISTANT, chat_open, send, shot
from .test_page import finished

pytestmark = pytest.mark.django_db(transaction=True)

TURN = "0123456789abcdef0123456789abcdef"


def parse(frame: str):
    return frame_parse(text=frame, binary=None, max_chars=100)


def test_a_feedback_frame_is_read():
    frame = parse(f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "down", "comment": " too long "}}')
    assert (frame.kind, frame.turn_id, frame.rating, frame.content) == ("feedback", TURN, "down", "too long")
    assert parse(f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "up"}}').content == ""


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type": "feedback", "rating": "up"}', "invalid_message"),
        ('{"type": "feedback", "turn_id": "not-hex", "rating": "up"}', "invalid_message"),
        (f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "meh"}}', "invalid_message"),
        (f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "up", "comment": 5}}', "invalid_message"),
        (
            f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "up", "comment": "{"x" * 2001}"}}',
            "message_too_large",
        ),
        (f'{{"type": "feedback", "turn_id": "{TURN}", "rating": "up", "comment": "a\\u0000b"}}', "invalid_message"),
    ],
)
def test_a_bad_feedback_frame_is_refused_with_its_code(frame, code):
    with pytest.raises(FrameError) as refused:
        frame_parse(text=frame, binary=None, max_chars=10_000)
    assert refused.value.code == code


@pytest.mark.asyncio
async def test_a_rating_is_recorded_acknowledged_and_shown_on_resume(avisitor, fake_groq):
    visitor = await avisitor()
    client = ChatClient(visitor)
    await client.connect()
    done = (await client.turn("hello"))[-1]
    turn_id = done["turn_id"]
    await client.send({"type": "feedback", "turn_id": turn_id, "rating": "down"})
    assert await client.receive() == {"type": "feedback_saved", "turn_id": turn_id, "rating": "down"}
    await client.send({"type": "feedback", "turn_id": turn_id, "rating": "up", "comment": "actually fine"})
    assert (await client.receive())["rating"] == "up"
    # A reply of no such turn, and a bad frame: an error each, and the socket lives on.
    await client.send({"type": "feedback", "turn_id": "f" * 32, "rating": "up"})
    refused = await client.receive()
    # Said to be about the rating, so a page does not take it for its running turn's error.
    assert (refused["code"], refused["about"], refused["turn_id"]) == ("invalid_message", "feedback", "f" * 32)
    await client.send({"type": "feedback", "turn_id": turn_id, "rating": "sideways"})
    assert (await client.receive())["code"] == "invalid_message"
    await client.send({"type": "ping"})
    assert (await client.receive())["type"] == "pong"
    await client.close()

    events = await events_of(client.session_id)
    reply = next(event for event in events if event.type == EventType.ASSISTANT_MESSAGE)
    ratings = [event for event in events if event.type == EventType.SYSTEM]
    assert [(event.data["rating"], event.content) for event in ratings] == [("down", ""), ("up", "actually fine")]
    assert all(event.data["kind"] == "feedback" and event.data["turn_id"] == turn_id for event in ratings)
    assert ratings[0].data["reply_seq"] == reply.seq
    assert ratings[0].data["model"] == reply.data["model"] == done["model"]

    again = ChatClient(visitor, session_id=client.session_id)
    session = await again.connect()
    replies = [item for item in session["history"] if item["role"] == "assistant"]
    assert [(item["turn_id"], item["feedback"]) for item in replies] == [(turn_id, "up")]
    await again.close()


@pytest.mark.asyncio
async def test_a_reply_rated_too_often_is_refused(avisitor):
    client = ChatClient(await avisitor())
    await client.connect()
    turn_id = (await client.turn("hello"))[-1]["turn_id"]
    for _ in range(services.FEEDBACK_PER_REPLY):
        await client.send({"type": "feedback", "turn_id": turn_id, "rating": "up"})
        assert (await client.receive())["type"] == "feedback_saved"
    await client.send({"type": "feedback", "turn_id": turn_id, "rating": "down"})
    assert (await client.receive())["code"] == "rate_limited"
    await client.close()


@pytest.mark.asyncio
async def test_a_reply_of_another_session_cannot_be_rated(avisitor):
    visitor = await avisitor()
    first = ChatClient(visitor)
    await first.connect()
    turn_id = (await first.turn("hello"))[-1]["turn_id"]
    await first.close()
    second = ChatClient(visitor)
    await second.connect()
    await second.send({"type": "feedback", "turn_id": turn_id, "rating": "down"})
    assert (await second.receive())["code"] == "invalid_message"
    await second.close()


def rated_session(rating: str | None) -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="visitor")
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="hi")
    turn_id = uuid.uuid4().hex
    services.event_record(
        session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="yo", data={"turn_id": turn_id}
    )
    if rating:
        services.feedback_record(session_id=session.id, turn_id=turn_id, rating=rating, comment="why")
    return session


def test_the_admin_filters_sessions_by_feedback_and_shows_it_in_the_timeline(client):
    up, down, unrated = rated_session("up"), rated_session("down"), rated_session(None)
    client.force_login(get_user_model().objects.create_superuser("staff", password="pw"))

    def listed(query: str) -> set[str]:
        page = client.get(f"/admin/audit/chatsession/?{query}").content.decode()
        return {str(session.id)[:8] for session in (up, down, unrated) if f"/{session.id}/change/" in page}

    assert listed("feedback=up") == {str(up.id)[:8]}
    assert listed("feedback=down") == {str(down.id)[:8]}
    assert listed("feedback=none") == {str(unrated.id)[:8]}
    timeline = client.get(f"/admin/audit/chatsession/{down.id}/change/").content.decode()
    assert "rated down the reply #2: why" in timeline


def test_a_reader_rates_a_reply_and_comments_in_the_page(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "hello")
    finished(page)
    reply = page.locator(ASSISTANT).last
    thumbs_down = reply.get_by_role("button", name="Bad reply")
    thumbs_down.click()
    expect(thumbs_down).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_role("button", name="Good reply")).to_have_attribute("aria-pressed", "false")
    reply.get_by_role("textbox", name="Comment on this reply").fill("it only echoed me")
    reply.get_by_role("button", name="Send").click()
    expect(reply.locator(".feedback-form")).to_have_count(0)
    shot(page, "31-feedback")
    session_id = page.locator("#session-id").inner_text().strip()
    rated = Event.objects.filter(session_id=session_id, type=EventType.SYSTEM)
    rows = []
    for _ in range(50):
        rows = list(rated.order_by("seq").values_list("data__rating", "content"))
        if len(rows) == 2:
            break
        page.wait_for_timeout(100)
    assert rows == [("down", ""), ("down", "it only echoed me")]
    # Reloaded, the page shows the rating it was given.
    page.reload()
    expect(page.locator(ASSISTANT).last.get_by_role("button", name="Bad reply")).to_have_attribute(
        "aria-pressed", "true", timeout=10_000
    )
