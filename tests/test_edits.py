"""Regenerate the last reply, edit the last message: new events, the replaced ones kept and marked superseded."""

import pytest
from asgiref.sync import sync_to_async

from audit import selectors, services
from audit.models import ChatSession, Event, EventType
from audit.summaries import transcript_build

from .conftest import ChatClient, text_of
from .fake_groq import text_reply

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@sync_to_async
def events_of(session_id) -> list[tuple[str, str, bool]]:
    return [
        (event.type, event.content, event.superseded)
        for event in Event.objects.filter(session_id=session_id).order_by("seq")
    ]


def conversation_sent(request: dict) -> list[tuple[str, str]]:
    """The user and assistant messages a model request carried."""
    return [(m["role"], m["content"]) for m in request["messages"] if m["role"] in ("user", "assistant")]


async def test_regenerate_replaces_the_last_reply(avisitor, fake_groq):
    fake_groq.enqueue(text_reply("First try."), text_reply("Second try."))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("tell me a joke")
    await client.send({"type": "regenerate"})
    frames = await client.until("done")
    # The sender is not sent its own message back; the reply streams as usual.
    assert frames[0]["type"] == "token" and text_of(frames) == "Second try."
    # The model was asked again without the replaced reply.
    assert conversation_sent(fake_groq.requests[-1]) == [("user", "tell me a joke")]
    assert await events_of(client.session_id) == [
        ("user_message", "tell me a joke", True),
        ("assistant_message", "First try.", True),
        ("user_message", "tell me a joke", False),
        ("assistant_message", "Second try.", False),
    ]
    resent = await sync_to_async(Event.objects.get)(session_id=client.session_id, seq=3)
    assert resent.data["resend"] == "regenerate" and resent.data["supersedes"] == 1
    await client.close()
    # Reconnecting shows what the conversation became.
    again = ChatClient(client.visitor, session_id=client.session_id)
    session = await again.connect()
    assert [(m["role"], m["content"]) for m in session["history"]] == [
        ("user", "tell me a joke"),
        ("assistant", "Second try."),
    ]
    await again.close()


async def test_edit_replaces_the_last_message_and_its_reply(avisitor, fake_groq):
    fake_groq.enqueue(text_reply("One."), text_reply("Two."), text_reply("Deux."))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("one")
    await client.turn("two")
    await client.send({"type": "edit", "content": "deux"})
    assert text_of(await client.until("done")) == "Deux."
    assert conversation_sent(fake_groq.requests[-1]) == [("user", "one"), ("assistant", "One."), ("user", "deux")]
    assert await events_of(client.session_id) == [
        ("user_message", "one", False),
        ("assistant_message", "One.", False),
        ("user_message", "two", True),
        ("assistant_message", "Two.", True),
        ("user_message", "deux", False),
        ("assistant_message", "Deux.", False),
    ]
    session = await sync_to_async(ChatSession.objects.get)(pk=client.session_id)
    # Every turn counts in the audit figures, replaced or not.
    assert session.turn_count == 3
    await client.close()


async def test_another_socket_is_told_which_turn_was_replaced(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply("First."), text_reply("Again."))
    first = ChatClient(visitor)
    await first.connect()
    second = ChatClient(visitor, session_id=first.session_id)
    await second.connect()
    await first.turn("hello")
    await second.until("done")
    await first.send({"type": "regenerate"})
    seen = await second.until("done")
    assert {key: seen[0][key] for key in ("type", "content", "resend")} == {
        "type": "user_message",
        "content": "hello",
        "resend": "regenerate",
    }
    assert text_of(seen) == "Again."
    await first.until("done")
    await first.close()
    await second.close()


@pytest.mark.parametrize("frame", [{"type": "regenerate"}, {"type": "edit", "content": "changed my mind"}])
async def test_regenerate_or_edit_before_any_message_is_an_error(avisitor, frame):
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send(frame)
    error = await client.receive()
    assert (error["type"], error["code"]) == ("error", "invalid_message")
    assert await events_of(client.session_id) == []
    # The socket goes on.
    assert (await client.turn("now a real one"))[-1]["type"] == "done"
    await client.close()


async def test_an_edit_is_checked_like_a_message(avisitor, fake_groq):
    fake_groq.enqueue(text_reply("Fine."))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hi")
    for bad in ({"type": "edit"}, {"type": "edit", "content": "   "}, {"type": "edit", "content": "nul \u0000"}):
        await client.send(bad)
        assert (await client.receive())["code"] == "invalid_message"
    assert [kind for kind, _, superseded in await events_of(client.session_id) if superseded] == []
    await client.close()


@sync_to_async
def _summary_reads_the_live_conversation() -> None:
    session = ChatSession.objects.create(anon_key="k", model="m")
    record = services.event_record
    record(session_id=session.id, type=EventType.USER_MESSAGE, content="first question")
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="a reply replaced")
    record(session_id=session.id, type=EventType.USER_MESSAGE, content="first question", supersede=True)
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="the reply kept")
    transcript = transcript_build(session_id=session.id, through_seq=4)
    assert "the reply kept" in transcript and "a reply replaced" not in transcript
    assert transcript.count("first question") == 1
    assert len(selectors.session_events(session_id=session.id)) == 4
    assert [e.content for e in selectors.session_events(session_id=session.id, superseded=False)] == [
        "first question",
        "the reply kept",
    ]


async def test_summaries_and_the_model_read_only_the_live_conversation():
    await _summary_reads_the_live_conversation()


@sync_to_async
def _search_superseded_and_deleted() -> None:
    session = ChatSession.objects.create(anon_key="searcher", model="m")
    record = services.event_record
    record(session_id=session.id, type=EventType.USER_MESSAGE, content="tell me about zeppelins")
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="Zeppelins float on hydrogen.")
    record(session_id=session.id, type=EventType.USER_MESSAGE, content="tell me about balloons", supersede=True)
    record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="Balloons float on helium.")
    deleted = ChatSession.objects.create(anon_key="searcher", model="m")
    record(session_id=deleted.id, type=EventType.USER_MESSAGE, content="zeppelins again")
    services.session_delete_by_owner(session_id=deleted.id)

    def search(query: str) -> list[dict]:
        return selectors.sessions_search(
            user_id=None, anon_key="searcher", query=query, exclude_session_id=None, limit=5
        )

    assert search("zeppelins") == []
    [found] = search("helium")
    assert found["matching_messages"] == ["assistant: Balloons float on helium."]


async def test_the_session_search_tool_finds_neither_replaced_text_nor_deleted_sessions():
    await _search_superseded_and_deleted()
