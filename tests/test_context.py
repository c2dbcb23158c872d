"""The context budget: whole turns are dropped oldest first, summarized once, and the request stays bounded."""

import uuid

import pytest
from asgiref.sync import sync_to_async

from audit import services
from audit.models import ChatSession, Event, EventType
from chat.context import EARLIER_PREFIX, messages_build, tokens_estimate, turns_split, window_cut

from .conftest import ChatClient
from .fake_groq import status_reply, text_reply, tool_calls_reply

SYSTEM = "You are helpful."


def event(seq: int, kind: str, content: str = "", **data) -> Event:
    return Event(seq=seq, type=kind, content=content, data=data)


def turn_with_tool(seq: int, words: int = 50) -> list[Event]:
    call = f"c{seq}"
    return [
        event(seq, EventType.USER_MESSAGE, "question " * words),
        event(seq + 1, EventType.TOOL_CALL, "current_time", call_id=call, name="current_time", arguments={}),
        event(seq + 2, EventType.TOOL_RESULT, "current_time", call_id=call, name="current_time", ok=True, result="x"),
        event(seq + 3, EventType.ASSISTANT_MESSAGE, "answer " * words),
    ]


def many_turns(count: int) -> list[Event]:
    return [e for n in range(count) for e in turn_with_tool(1 + 4 * n)]


def test_turns_start_at_user_messages():
    events = many_turns(3)
    assert [[e.seq for e in turn] for turn in turns_split(events)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]


def test_nothing_is_dropped_while_everything_fits():
    events = many_turns(3)
    assert window_cut(events=events, system_prompt=SYSTEM, earlier="", budget=100_000) == ([], events)


def test_over_budget_whole_old_turns_go_and_the_rest_fits():
    events = many_turns(40)
    dropped, kept = window_cut(events=events, system_prompt=SYSTEM, earlier="", budget=2000)
    assert dropped and kept and dropped + kept == events
    # Cut at a turn boundary: the kept part starts with a user message, every call keeps its result.
    assert kept[0].type == EventType.USER_MESSAGE and dropped[-1].type == EventType.ASSISTANT_MESSAGE
    messages = messages_build(events=kept, system_prompt=SYSTEM, earlier="an earlier summary")
    assert tokens_estimate(messages) <= 2000 * 0.6
    calls = [c["id"] for m in messages for c in m.get("tool_calls") or ()]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert calls == answered
    for n, message in enumerate(messages):
        if message.get("tool_calls"):
            assert messages[n + 1]["role"] == "tool"


def test_the_newest_turn_stays_even_when_it_alone_is_too_big():
    events = many_turns(2) + turn_with_tool(9, words=2000)
    dropped, kept = window_cut(events=events, system_prompt=SYSTEM, earlier="", budget=500)
    assert [e.seq for e in kept] == [9, 10, 11, 12]
    assert len(dropped) == 8


def long_session(anon_key: str, turns: int) -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key=anon_key, model="llama-3.3-70b-versatile")
    for n in range(turns):
        services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content=f"question {n} " * 10)
        services.event_record(session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content=f"answer {n} " * 10)
    return session


def summary_requests(fake) -> list[dict]:
    return [r for r in fake.requests if r.get("response_format")]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_hundreds_of_turns_keep_working_with_a_bounded_request(avisitor, fake_groq, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 2000
    visitor = await avisitor()
    session = await sync_to_async(long_session)(visitor.session_key, 300)
    client = ChatClient(visitor, session_id=session.id)
    assert len((await client.connect())["history"]) == 600

    sent_sizes = []
    for n in range(4):
        frames = await client.turn(f"and one more thing, number {n}")
        assert frames[-1]["type"] == "done"
        request = [r for r in fake_groq.requests if r.get("stream")][-1]
        sent_sizes.append(tokens_estimate(request["messages"]))
        assert request["messages"][1]["content"].startswith(EARLIER_PREFIX)
        assert request["messages"][-1]["content"] == f"and one more thing, number {n}"
    assert max(sent_sizes) <= 2000
    # The rolling summary was written once, by the fast model, and kept for the next turns.
    assert len(summary_requests(fake_groq)) == 1
    assert summary_requests(fake_groq)[0]["model"] == settings.GROQ_FAST_MODEL
    stored = await sync_to_async(ChatSession.objects.get)(pk=session.id)
    assert stored.context_summary == "A short fake summary of the conversation."
    assert stored.context_summary_seq > 500
    replies = await sync_to_async(list)(
        Event.objects.filter(session=session, type=EventType.ASSISTANT_MESSAGE, seq__gt=600).order_by("seq")
    )
    assert replies[0].data["context"]["dropped_events"] > 500
    assert [r.data["context"]["dropped_events"] for r in replies[1:]] == [0, 0, 0]
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_without_the_model_the_rolling_summary_is_extractive(avisitor, fake_groq, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 600
    visitor = await avisitor()
    session = await sync_to_async(long_session)(visitor.session_key, 30)
    fake_groq.enqueue(status_reply(503))  # the summary call fails; the reply itself works
    client = ChatClient(visitor, session_id=session.id)
    await client.connect()
    frames = await client.turn("still there?")
    assert frames[-1]["type"] == "done" and frames[-2]["type"] == "token"
    stored = await sync_to_async(ChatSession.objects.get)(pk=session.id)
    assert stored.context_summary.startswith("The user said: ")
    assert len(stored.context_summary) <= 1500
    newest_dropped = await sync_to_async(Event.objects.get)(session=session, seq=stored.context_summary_seq - 1)
    assert " ".join(newest_dropped.content.split())[:100] in stored.context_summary
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_fast_model_gets_its_own_budget(avisitor, fake_groq, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 5000
    settings.GROQ_FAST_MODEL = "small-model"
    settings.CHAT_CONTEXT_BUDGETS = {"small-model": 800}
    visitor = await avisitor()
    session = await sync_to_async(long_session)(visitor.session_key, 40)
    client = ChatClient(visitor, session_id=session.id)
    await client.connect()
    await client.turn("Who wrote Hamlet?")  # short_factual: the fast model
    request = [r for r in fake_groq.requests if r.get("stream")][-1]
    assert request["model"] == "small-model"
    assert tokens_estimate(request["messages"]) <= 800
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_tool_results_filling_the_budget_force_a_text_answer(avisitor, fake_groq, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 400
    settings.CHAT_TOOL_RESULT_MAX_CHARS = 4000
    fake_groq.enqueue(
        tool_calls_reply([(f"c{n}", "system_status", {}) for n in range(8)], shape="one_delta"),
        text_reply("Here is the status."),
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("server status please")
    assert frames[-1]["type"] == "done"
    first, second = [r for r in fake_groq.requests if r.get("stream")]
    assert "tools" in first and "tools" not in second
    await client.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_rolling_summary_is_extended_at_the_next_cut(avisitor, fake_groq, settings):
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 1200
    visitor = await avisitor()
    session = await sync_to_async(long_session)(visitor.session_key, 60)
    client = ChatClient(visitor, session_id=session.id)
    await client.connect()
    await client.turn("tell me more " * 20)
    first = await sync_to_async(ChatSession.objects.get)(pk=session.id)
    assert first.context_summary and len(summary_requests(fake_groq)) == 1
    # Turns pile up (the fake echoes each long message) until the history outgrows the budget again.
    for n in range(40):
        await client.turn(f"and then {n} " * 20)
        if len(summary_requests(fake_groq)) == 2:
            break
    extension = summary_requests(fake_groq)[1]["messages"][-1]["content"]
    assert extension.startswith(f"Previous summary: {first.context_summary}")
    assert f"User: {'and then 0 ' * 20}".strip() in extension
    second = await sync_to_async(ChatSession.objects.get)(pk=session.id)
    assert second.context_summary_seq > first.context_summary_seq
    # The request after the second cut starts from the new summary and newer turns only.
    request = [r for r in fake_groq.requests if r.get("stream")][-1]
    assert tokens_estimate(request["messages"]) <= 1200
    await client.close()
