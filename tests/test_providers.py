"""The provider seam: the model chosen by settings, an OpenAI-compatible server, and a spare model."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

from audit.models import EventType, Summary
from chat.llm import TextDelta, Usage, chat_model_get
from chat.llm.fallback import FallbackChatModel
from chat.llm.groq_client import GroqChatModel
from chat.llm.offline import OfflineChatModel
from chat.llm.openai_compatible import OpenAICompatibleChatModel
from chat.llm.types import retry_after_seconds

from .conftest import REPO, ChatClient, events_of, text_of
from .fake_groq import FakeGroq, cut_reply, openai_reply, status_reply, text_reply, tool_calls_reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def spare_server() -> Iterator[FakeGroq]:
    """A second fake server, spoken to as an OpenAI-compatible one (its API root is /openai/v1)."""
    server = FakeGroq().start()
    yield server
    server.stop()


@pytest.fixture
def spare(settings, spare_server: FakeGroq) -> FakeGroq:
    spare_server.reset()
    settings.OPENAI_BASE_URL = f"{spare_server.url}/openai/v1"
    settings.OPENAI_API_KEY = "spare-key"
    settings.OPENAI_MODEL = "spare-model"
    settings.OPENAI_FAST_MODEL = "spare-model"
    return spare_server


def test_the_model_is_chosen_by_settings_and_the_old_ones_still_work(settings, spare):
    settings.LLM_PROVIDER, settings.GROQ_API_KEY = "", ""
    assert isinstance(chat_model_get(), OfflineChatModel)
    settings.GROQ_API_KEY = "key"
    assert isinstance(chat_model_get(), GroqChatModel)  # GROQ_API_KEY alone still means Groq
    settings.LLM_PROVIDER = "openai"
    model = chat_model_get()
    assert isinstance(model, OpenAICompatibleChatModel)
    assert (model.mode, model.model) == ("openai", "spare-model")
    settings.LLM_PROVIDER = "offline"
    assert isinstance(chat_model_get(), OfflineChatModel)
    settings.LLM_FALLBACK_PROVIDER, settings.LLM_FALLBACK_MODEL = "groq", "llama-3.1-8b-instant"
    with_spare = chat_model_get()
    assert isinstance(with_spare, FallbackChatModel)
    assert (with_spare.spare.mode, with_spare.spare.model) == ("groq", "llama-3.1-8b-instant")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LLM_PROVIDER", "anthropic"),
        ("LLM_PROVIDER", "openai"),  # without OPENAI_BASE_URL
        ("LLM_FALLBACK_PROVIDER", "x"),
        ("LLM_FALLBACK_PROVIDER", "groq"),  # without GROQ_API_KEY
    ],
)
def test_a_wrong_provider_setting_stops_the_start(variable, value):
    env = {**os.environ, "DEBUG": "true", variable: value}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("GROQ_API_KEY", None)
    started = subprocess.run(
        [sys.executable, "-c", "import llmbacker.settings"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert started.returncode != 0
    assert "ImproperlyConfigured" in started.stderr


@pytest.mark.asyncio
async def test_an_openai_compatible_server_streams_text_and_tool_calls(avisitor, settings, spare):
    settings.LLM_PROVIDER = "openai"
    spare.enqueue(
        tool_calls_reply([("c1", "current_time", {"timezone": "UTC"})], shape="split"),
        openai_reply("It is noon.", usage=(40, 6)),
    )
    client = ChatClient(await avisitor())
    session = await client.connect()
    assert (session["llm_mode"], session["model"]) == ("openai", "spare-model")
    frames = await client.turn("what time is it?")
    await client.close()
    assert [frame["type"] for frame in frames if frame["type"] != "token"] == ["tool_call", "tool_result", "done"]
    assert text_of(frames) == "It is noon."
    # Usage from the last chunk (top-level `usage`, as OpenAI sends it), the first round's from x_groq.
    assert frames[-1]["usage"] == {"prompt_tokens": 20 + 40, "completion_tokens": 9 + 6}
    first = spare.requests[0]
    assert first["model"] == "spare-model" and first["stream_options"] == {"include_usage": True}
    assert spare.headers[0].get("authorization") == "Bearer spare-key"


@pytest.mark.asyncio
async def test_the_openai_compatible_client_reads_usage_and_retries_a_503(settings, spare):
    settings.GROQ_MAX_RETRIES = 1
    spare.enqueue(status_reply(503), openai_reply("hello there", usage=(5, 2)))
    model = OpenAICompatibleChatModel(
        api_key="k", base_url=settings.OPENAI_BASE_URL, model="m", max_retries=1, timeout=10, connect_timeout=5
    )
    items = [item async for item in model.stream(messages=[{"role": "user", "content": "hi"}], tools=[])]
    assert "".join(item.text for item in items if isinstance(item, TextDelta)) == "hello there"
    assert [item for item in items if isinstance(item, Usage)][0].prompt_tokens == 5
    assert len(spare.requests) == 2


@pytest.fixture
def main_and_spare(settings, fake_groq, spare) -> tuple[FakeGroq, FakeGroq]:
    """Groq (the fake server) as the main model, the second fake server as the spare."""
    settings.LLM_FALLBACK_PROVIDER = "openai"
    settings.GROQ_MAX_RETRIES = 0
    return fake_groq, spare


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "reason"), [(503, "llm_unavailable"), (429, "llm_rate_limited")])
async def test_the_spare_answers_when_the_main_model_fails_and_the_reply_says_so(
    avisitor, main_and_spare, status, reason
):
    main, spare = main_and_spare
    main.enqueue(status_reply(status, headers={"retry-after": "0"}))
    spare.enqueue(openai_reply("From the spare.", usage=(30, 4)))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("hello")
    await client.close()
    kinds = [frame["type"] for frame in frames]
    assert kinds.count("done") == 1 and "error" not in kinds
    announced = next(frame for frame in frames if frame["type"] == "model_fallback")
    assert announced["model"] == "spare-model" and announced["reason"] == reason
    assert announced["replaced"] == main.requests[0]["model"]
    assert text_of(frames) == "From the spare."
    assert frames[-1]["model"] == "spare-model"
    reply = [event for event in await events_of(client.session_id) if event.type == EventType.ASSISTANT_MESSAGE][0]
    assert reply.data["model"] == "spare-model"
    assert reply.data["fallback"] == {"model": "spare-model", "replaced": announced["replaced"], "reason": reason}
    assert reply.data["usage"] == {"prompt_tokens": 30, "completion_tokens": 4}


@pytest.mark.asyncio
async def test_a_reply_that_began_is_not_asked_of_the_spare(avisitor, main_and_spare):
    main, spare = main_and_spare
    main.enqueue(cut_reply("half a rep"))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("hello")
    await client.close()
    assert [frame.get("code") for frame in frames if frame["type"] == "error"] == ["llm_unavailable"]
    assert frames[-1]["type"] == "done" and "model_fallback" not in [frame["type"] for frame in frames]
    assert spare.requests == []


@pytest.mark.asyncio
async def test_after_a_fallback_the_turns_tool_rounds_stay_on_the_spare(avisitor, main_and_spare):
    main, spare = main_and_spare
    main.enqueue(status_reply(503))
    spare.enqueue(
        tool_calls_reply([("c1", "current_time", {"timezone": "UTC"})]),
        text_reply("Noon, says the spare."),
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("what time is it?")
    await client.close()
    assert text_of(frames) == "Noon, says the spare."
    # (The summary written when the socket closed asks the main model again: not counted.)
    streamed = [[request for request in server.requests if request.get("stream")] for server in (main, spare)]
    assert [len(requests) for requests in streamed] == [1, 2]


@pytest.mark.asyncio
async def test_a_server_that_sends_no_usage_is_charged_by_estimate(avisitor, settings, spare):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_PRICES = {"spare-model": (Decimal("1"), Decimal("1"))}
    spare.enqueue(openai_reply("An answer with no usage after it.", usage=None))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("hello")
    await client.close()
    assert frames[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    reply = [event for event in await events_of(client.session_id) if event.type == EventType.ASSISTANT_MESSAGE][0]
    estimated = reply.data["usage_estimated"]
    assert estimated["completion_tokens"] == -(-len("An answer with no usage after it.") // 4)
    assert reply.data["cost_usd"] == (estimated["prompt_tokens"] + estimated["completion_tokens"]) / 1_000_000


@pytest.mark.asyncio
async def test_after_a_fallback_each_round_is_charged_at_its_own_models_price(avisitor, settings, main_and_spare):
    main, spare = main_and_spare
    settings.LLM_PRICES = {
        settings.GROQ_MODEL: (Decimal("1"), Decimal("10")),
        settings.GROQ_FAST_MODEL: (Decimal("1"), Decimal("10")),
        "spare-model": (Decimal("100"), Decimal("1000")),
    }
    # Round 1 on the main model (a tool call, 20 + 9 tokens); round 2's call fails, the spare answers.
    main.enqueue(tool_calls_reply([("c1", "current_time", {"timezone": "UTC"})]), status_reply(503))
    spare.enqueue(openai_reply("Noon.", usage=(30, 4)))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("what time is it?")
    await client.close()
    assert text_of(frames) == "Noon." and frames[-1]["model"] == "spare-model"
    reply = [event for event in await events_of(client.session_id) if event.type == EventType.ASSISTANT_MESSAGE][0]
    assert reply.data["cost_usd"] == pytest.approx((20 * 1 + 9 * 10 + 30 * 100 + 4 * 1000) / 1_000_000)


@pytest.mark.asyncio
async def test_a_stop_closes_the_spares_stream_at_once(avisitor, main_and_spare):
    main, spare = main_and_spare
    main.enqueue(status_reply(503))
    spare.enqueue(openai_reply(" ".join(f"w{n}" for n in range(300)), delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "talk slowly"})
    while (await client.receive())["type"] != "token":
        pass
    await client.send({"type": "stop"})
    await client.until("done")
    # The spare's HTTP stream was closed by the stop, not left to run out (300 words x 50 ms).
    assert await asyncio.to_thread(spare.wait_outcome, 0, 5) == "client_closed"
    await client.close()


def test_a_retry_after_that_is_not_a_usable_number_is_ignored():
    assert [retry_after_seconds(value) for value in ("2.5", "inf", "nan", "-1", "Wed, 21 Oct 2026", None)] == [
        2.5,
        None,
        None,
        None,
        None,
        None,
    ]


@pytest.mark.asyncio
async def test_a_summary_the_spare_wrote_names_the_spare_and_is_charged_at_its_price(
    avisitor, main_and_spare, settings
):
    main, spare = main_and_spare
    settings.LLM_PRICES = {**settings.LLM_PRICES, "spare-model": (Decimal("2"), Decimal("10"))}
    # The turn on the main model; the summary's request to it fails, the spare writes it.
    main.enqueue(text_reply("Hello from the main model."), status_reply(503))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")
    await client.close()
    summary = await Summary.objects.aget(session_id=client.session_id)
    assert (summary.status, summary.model) == ("done", "spare-model")
    # The main model's refusal used nothing; the spare's answer (the fake's default) used 30 + 15 tokens.
    assert (summary.prompt_tokens, summary.completion_tokens) == (30, 15)
    assert summary.cost_usd == Decimal("0.00021")  # 30 x $2 + 15 x $10, per million
    assert [request.get("response_format") for request in spare.requests] == [{"type": "json_object"}]
