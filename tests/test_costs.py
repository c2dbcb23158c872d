"""What replies cost: by the price table, by estimate when the model sent no usage, added up per session."""

import asyncio
import json
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from audit import services
from audit.costs import cost_usd
from audit.models import ChatSession, EventType, Summary
from chat.limits import token_budget_check
from llmbacker.settings import _price

from .conftest import ChatClient, events_of, text_of
from .fake_groq import json_reply, json_validate_failed_reply, text_reply
from .test_context import long_session

pytestmark = pytest.mark.django_db(transaction=True)

# USD per million tokens, input and output.
PRICE = (Decimal("1.50"), Decimal("4.00"))


@pytest.fixture
def priced(settings, fake_groq):
    """Both chat models priced at PRICE; the replies come from the fake Groq server."""
    settings.LLM_PRICES = {settings.GROQ_MODEL: PRICE, settings.GROQ_FAST_MODEL: PRICE}
    return fake_groq


def expected_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return float((prompt_tokens * PRICE[0] + completion_tokens * PRICE[1]) / 1_000_000)


@pytest.mark.asyncio
async def test_each_reply_is_charged_by_the_price_table_and_the_session_adds_them_up(avisitor, priced):
    priced.enqueue(text_reply("hello there", usage=(1200, 700)), text_reply("again", usage=(3000, 50)))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hi")
    await client.turn("more")
    await client.close()
    replies = [event for event in await events_of(client.session_id) if event.type == EventType.ASSISTANT_MESSAGE]
    assert [reply.data["cost_usd"] for reply in replies] == [expected_cost(1200, 700), expected_cost(3000, 50)]
    assert all("usage_estimated" not in reply.data for reply in replies)
    session = await ChatSession.objects.aget(pk=client.session_id)
    assert session.cost_usd == Decimal("0.0046") + Decimal("0.0047")


@pytest.mark.asyncio
async def test_a_stopped_reply_is_charged_for_what_it_used_by_estimate(avisitor, priced, settings):
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 20
    priced.enqueue(text_reply(" ".join(f"word{n}" for n in range(200)), delay=0.05))
    visitor = await avisitor()
    client = ChatClient(visitor)
    await client.connect()
    await client.send({"type": "message", "content": "talk slowly"})
    frames = []
    while sum(frame["type"] == "token" for frame in frames) < 3:
        frames.append(await client.receive())
    await client.send({"type": "stop"})
    frames += await client.until("done")
    await client.close()
    assert frames[-1]["stopped"] is True
    reply = (await events_of(client.session_id))[-1]
    assert reply.content == text_of(frames)
    # No usage came from the model: the prompt and the text produced are estimated.
    assert reply.data["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    estimated = reply.data["usage_estimated"]
    assert estimated["completion_tokens"] == math.ceil(len(reply.content) / 4)
    assert estimated["prompt_tokens"] > 0
    assert reply.data["cost_usd"] == expected_cost(estimated["prompt_tokens"], estimated["completion_tokens"])
    session = await ChatSession.objects.aget(pk=client.session_id)
    assert session.cost_usd == Decimal(str(reply.data["cost_usd"]))
    # The estimate counts against the visitor's daily token budget too (charged just after `done`).
    refusal = None
    for _ in range(40):
        if refusal := await token_budget_check(visitor=f"anon:{visitor.session_key}"):
            break
        await asyncio.sleep(0.05)
    assert refusal is not None and refusal.code == "token_budget_exceeded"


FAST_PRICE = (Decimal("0.10"), Decimal("0.20"))


@pytest.fixture
def cut_history(avisitor, priced, settings):
    """A visitor's session of 30 turns, cut at the next turn (the fast model, priced apart, summarizes it first)."""
    settings.CHAT_CONTEXT_BUDGET_TOKENS = 600
    settings.LLM_PRICES = {settings.GROQ_MODEL: PRICE, settings.GROQ_FAST_MODEL: FAST_PRICE}

    async def start(*replies):
        visitor = await avisitor()
        session = await sync_to_async(long_session)(visitor.session_key, 30)
        priced.enqueue(*replies)
        return visitor, session

    return start


async def turn_on(visitor, session, wait_for_refusal: bool = False) -> tuple[list[dict], object]:
    """Run one turn; with `wait_for_refusal`, wait (socket open) until the budget refuses the visitor."""
    client = ChatClient(visitor, session_id=session.id)
    await client.connect()
    frames = await client.turn("still there?")
    refusal = None
    if wait_for_refusal:
        # The tokens are charged just after `done`: wait for it before closing.
        for _ in range(40):
            if refusal := await token_budget_check(visitor=f"anon:{visitor.session_key}"):
                break
            await asyncio.sleep(0.05)
    await client.close()
    return frames, refusal


@pytest.mark.asyncio
async def test_the_rolling_summary_s_model_call_is_charged_to_the_reply_that_needed_it(cut_history, settings):
    """A cut history is summarized by the fast model first: its tokens count in the reply's cost and the budget."""
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 500
    visitor, session = await cut_history(
        json_reply(json.dumps({"summary": "They asked thirty questions."}), usage=(400, 30)),
        text_reply("Still here.", usage=(100, 10)),
    )
    frames, refusal = await turn_on(visitor, session, wait_for_refusal=True)
    assert frames[-1]["usage"] == {"prompt_tokens": 100, "completion_tokens": 10}  # the reply's own rounds
    reply = (await events_of(session.id))[-1]
    summarized = cost_usd(model=settings.GROQ_FAST_MODEL, prompt_tokens=400, completion_tokens=30)
    assert summarized == (400 * FAST_PRICE[0] + 30 * FAST_PRICE[1]) / 1_000_000
    assert reply.data["context"]["summary_usage"] == {
        "model": settings.GROQ_FAST_MODEL,
        "prompt_tokens": 400,
        "completion_tokens": 30,
        "estimated": False,
        "cost_usd": float(summarized),
    }
    # Each call at its own model's price.
    answered = cost_usd(model=reply.data["model"], prompt_tokens=100, completion_tokens=10)
    assert reply.data["cost_usd"] == float(answered + summarized)
    stored = await ChatSession.objects.aget(pk=session.id)
    assert stored.cost_usd == answered + summarized
    # The session's tokens: the thirty turns' (none reported), the reply's and the summary call's.
    assert (stored.prompt_tokens, stored.completion_tokens) == (500, 40)
    # 110 tokens for the reply alone would leave room; with the summary's 430 the day's 500 are spent.
    assert refusal is not None and refusal.code == "token_budget_exceeded"


@pytest.mark.asyncio
async def test_a_history_summary_without_usage_is_estimated_apart_from_the_reply(cut_history, settings):
    """Groq's json_validate_failed answer has no usage: estimated, charged, but not taken for the reply's rounds."""
    visitor, session = await cut_history(
        json_validate_failed_reply(json.dumps({"summary": "They asked thirty questions."})),
        text_reply("Still here.", usage=(100, 10)),
    )
    await turn_on(visitor, session)
    reply = (await events_of(session.id))[-1]
    side = reply.data["context"]["summary_usage"]
    assert side["estimated"] is True and side["prompt_tokens"] > 0 and side["completion_tokens"] > 0
    assert "usage_estimated" not in reply.data  # the reply's own rounds all reported their usage
    answered = cost_usd(model=reply.data["model"], prompt_tokens=100, completion_tokens=10)
    assert reply.data["cost_usd"] == pytest.approx(float(answered) + side["cost_usd"])
    stored = await ChatSession.objects.aget(pk=session.id)
    assert (stored.prompt_tokens, stored.completion_tokens) == (100, 10)  # estimates are not counted as reported


@pytest.mark.asyncio
async def test_a_model_with_no_price_records_no_cost(avisitor, settings, fake_groq):
    settings.LLM_PRICES = {}
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hi")
    await client.close()
    reply = (await events_of(client.session_id))[-1]
    assert reply.type == EventType.ASSISTANT_MESSAGE
    assert reply.data["cost_usd"] is None
    assert (await ChatSession.objects.aget(pk=client.session_id)).cost_usd == 0


@pytest.mark.asyncio
async def test_the_offline_model_costs_nothing(avisitor):
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")
    await client.close()
    reply = (await events_of(client.session_id))[-1]
    assert (reply.data["model"], reply.data["cost_usd"]) == ("offline-demo", 0.0)


def test_the_admin_adds_up_the_listed_sessions_per_user(client):
    staff = get_user_model().objects.create_superuser("staff", password="pw")
    ana = get_user_model().objects.create_user("ana", password="pw")
    for owner, cost, summary_cost in [(ana, 0.25, "0.125"), (ana, 0.5, None), (None, 4.0, "0.0625")]:
        session = ChatSession.objects.create(id=uuid.uuid4(), user=owner, anon_key="" if owner else "visitor")
        services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="hi")
        services.event_record(
            session_id=session.id, type=EventType.ASSISTANT_MESSAGE, content="yo", data={"cost_usd": cost}
        )
        if summary_cost is not None:
            Summary.objects.create(session=session, cost_usd=Decimal(summary_cost), prompt_tokens=7)
    client.force_login(staff)
    everyone = client.get("/admin/audit/chatsession/").content.decode()
    # The replies' cost and the summaries' (the third session has none yet).
    assert "3 sessions listed" in everyone and "$4.937500" in everyone
    assert "replies $4.750000, summaries $0.187500" in everyone
    assert '<td class="field-cost">0.375000</td>' in everyone  # one session: its reply and its summary
    assert '<td class="field-tokens">7</td>' in everyone  # its summary's tokens (its reply reported none)
    anas = client.get(f"/admin/audit/chatsession/?user__id__exact={ana.pk}").content.decode()
    assert "2 sessions listed" in anas and "$0.875000" in anas and "7 tokens" in anas  # the summary's
    # Each owner links to their sessions, an anonymous visitor by key (named by a hash, as in the reports).
    assert f'href="?user__id__exact={ana.pk}"' in everyone and 'href="?anon_key=visitor"' in everyone
    visitor = client.get("/admin/audit/chatsession/?anon_key=visitor").content.decode()
    assert "1 session listed" in visitor and "$4.062500" in visitor


@pytest.mark.parametrize("price", ["1", "a/b", "1/2/3", "-1/2", "Infinity/1", "1/NaN"])
def test_a_malformed_price_is_refused_at_start(price):
    with pytest.raises(ImproperlyConfigured):
        _price("some-model", price)


def test_a_price_is_input_and_output_per_million():
    assert _price("m", "0.59/0.79") == (Decimal("0.59"), Decimal("0.79"))


def test_concurrent_replies_add_up_exactly_on_the_session():
    """Costs are decimals bumped in the session row's UPDATE: eight writers at once lose nothing."""
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="v")

    def record(_: int) -> None:
        try:
            services.event_record(
                session_id=session.id, type=EventType.ASSISTANT_MESSAGE, data={"cost_usd": 0.00000013}
            )
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(record, range(8)))
    assert ChatSession.objects.get(pk=session.id).cost_usd == Decimal("0.00000104")
