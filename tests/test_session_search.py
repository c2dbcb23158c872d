"""The session-search tool: the caller's own earlier sessions, by summary or message text."""

import asyncio
import json
import uuid

import pytest

from audit import services
from audit.models import ChatSession, EventType, Summary
from chat.tools import ToolContext, tool_run
from chat.tools.registry import tool_get

from .conftest import ChatClient, on_postgres, service_missing, text_of
from .fake_groq import text_reply, tool_calls_reply

pytestmark = pytest.mark.django_db(transaction=True)


def chat(anon_key: str, *messages: str, summary: str = "") -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key=anon_key, model="m")
    for n, text in enumerate(messages):
        kind = EventType.USER_MESSAGE if n % 2 == 0 else EventType.ASSISTANT_MESSAGE
        services.event_record(session_id=session.id, type=kind, content=text)
    if summary:
        Summary.objects.create(session=session, status="done", title=summary, text=summary)
        ChatSession.objects.filter(pk=session.pk).update(title=summary)
    return session


def search(context: ToolContext, **arguments):
    return asyncio.run(tool_run(name="sessions_search", arguments=json.dumps(arguments), context=context))


def test_the_caller_context_is_not_part_of_the_schema():
    schema = tool_get("sessions_search").parameters
    assert set(schema["properties"]) == {"query", "limit"}
    assert schema["required"] == ["query"]


def test_without_a_context_the_tool_refuses():
    outcome = asyncio.run(tool_run(name="sessions_search", arguments='{"query": "x"}'))
    assert (outcome.ok, outcome.result) == (False, "this tool needs to know who is calling")


def test_only_the_callers_own_sessions_are_found():
    mine = chat("me", "Which trains go to Lisbon?", "Several do.")
    by_summary = chat("me", "hello", "hi", summary="Hotel booking in Lisbon")
    chat("me", "Something about Porto", "ok")
    chat("someone-else", "My secret Lisbon plans", "noted")
    current = chat("me", "find my Lisbon chats")
    outcome = search(ToolContext(session_id=current.id, user_id=None, anon_key="me"), query="Lisbon")
    assert outcome.ok, outcome.result
    found = {row["session_id"]: row for row in outcome.result}
    assert set(found) == {str(mine.id), str(by_summary.id)}
    assert found[str(mine.id)]["matching_messages"] == ["user: Which trains go to Lisbon?"]
    assert found[str(by_summary.id)]["summary"] == "Hotel booking in Lisbon"


def test_users_and_anonymous_visitors_never_see_each_others_sessions():
    from django.contrib.auth import get_user_model

    ada = get_user_model().objects.create_user("ada", password="pw")
    bob = get_user_model().objects.create_user("bob", password="pw")
    adas = ChatSession.objects.create(id=uuid.uuid4(), user=ada, model="m")
    services.event_record(session_id=adas.id, type=EventType.USER_MESSAGE, content="Lisbon for Ada")
    # An anonymous session made with the very session key Ada's browser had before logging in.
    anonymous = chat("shared-key", "Lisbon for the anonymous visitor")
    ChatSession.objects.create(id=uuid.uuid4(), user=bob, model="m")

    def found(user_id, anon_key):
        context = ToolContext(session_id=uuid.uuid4(), user_id=user_id, anon_key=anon_key)
        return {row["session_id"] for row in search(context, query="Lisbon").result}

    assert found(ada.pk, "") == {str(adas.id)}
    assert found(ada.pk, "shared-key") == {str(adas.id)}
    assert found(bob.pk, "") == set()
    assert found(None, "shared-key") == {str(anonymous.id)}
    assert found(None, "") == set()


def test_the_limit_holds_and_newest_come_first():
    sessions = [chat("me", f"train number {n}") for n in range(4)]
    current = chat("me")
    outcome = search(ToolContext(session_id=current.id, user_id=None, anon_key="me"), query="train", limit=3)
    assert [row["session_id"] for row in outcome.result] == [str(s.id) for s in reversed(sessions)][:3]


def test_postgresql_search_is_full_text():
    if not on_postgres():
        service_missing("full-text search is PostgreSQL's; SQLite uses the plain word match")
    stored = chat("me", "The trains were running late")
    current = chat("me")
    context = ToolContext(session_id=current.id, user_id=None, anon_key="me")
    # Stemming: "train" finds "trains"; web-search syntax: a quoted phrase, a minus excludes.
    assert [r["session_id"] for r in search(context, query="train").result] == [str(stored.id)]
    assert [r["session_id"] for r in search(context, query='"running late"').result] == [str(stored.id)]
    assert search(context, query="trains -late").result == []


@pytest.mark.asyncio
async def test_the_model_searches_the_visitors_earlier_sessions(avisitor, fake_groq):
    visitor = await avisitor()
    earlier = ChatClient(visitor)
    fake_groq.enqueue(text_reply("Noted."))
    await earlier.connect()
    await earlier.turn("Remember my flight to Oslo")
    await earlier.close()

    fake_groq.enqueue(
        tool_calls_reply([("s1", "sessions_search", {"query": "Oslo"})]),
        text_reply("You asked about a flight to Oslo."),
    )
    now = ChatClient(visitor)
    await now.connect()
    frames = await now.turn("What did I say about Oslo before?")
    result = next(frame for frame in frames if frame["type"] == "tool_result")
    assert result["ok"] is True
    assert [row["session_id"] for row in result["result"]] == [str(earlier.session_id)]
    assert text_of(frames) == "You asked about a flight to Oslo."
    stranger = ChatClient(await avisitor())
    fake_groq.enqueue(tool_calls_reply([("s2", "sessions_search", {"query": "Oslo"})]), text_reply("Nothing."))
    await stranger.connect()
    frames = await stranger.turn("Did we talk about Oslo in earlier sessions?")
    assert next(frame for frame in frames if frame["type"] == "tool_result")["result"] == []
    await now.close()
    await stranger.close()
