"""Routing: each rule, its order, and that the choice is recorded and sent upstream."""

import pytest

from chat.strategy import strategy_choose

from .conftest import ChatClient, events_of
from .fake_groq import text_reply


def choose(content: str, *, history_tokens: int = 100, budget_tokens: int = 8000, used_tools: bool = False):
    return strategy_choose(
        content=content,
        history_tokens=history_tokens,
        budget_tokens=budget_tokens,
        last_turn_used_tools=used_tools,
        main_model="main",
        fast_model="fast",
        system_prompt="Be helpful.",
    )


@pytest.mark.parametrize(
    ("content", "name", "model"),
    [
        ("What is the capital of France?", "short_factual", "fast"),
        ("who wrote Hamlet", "short_factual", "fast"),
        ("What time is it in Tokyo?", "tool_heavy", "main"),
        ("What day is it today?", "tool_heavy", "main"),
        ("how much is 17 * 23", "tool_heavy", "main"),
        ("Can you check the server load?", "tool_heavy", "main"),
        ("What did we talk about last week?", "tool_heavy", "main"),
        ("Did we talk about this in earlier sessions?", "tool_heavy", "main"),
        ("Explain why the sky is blue", "analytical", "main"),
        ("Explain the time complexity of merge sort", "analytical", "main"),
        ("Explain memory management step by step", "analytical", "main"),
        ("Compare Postgres and MySQL for a chat backend", "analytical", "main"),
        ("Here is my code:\n```py\nprint(1)\n```", "analytical", "main"),
        ("word " * 100, "analytical", "main"),
        ("Remember to answer in French from now on.", "conversational", "main"),
        ("Thanks, that was lovely.", "conversational", "main"),
    ],
)
def test_each_rule_picks_its_strategy(content, name, model):
    chosen = choose(content)
    assert (chosen.name, chosen.model) == (name, model)
    assert chosen.tools is True
    assert chosen.reason


def test_a_long_history_wins_over_every_other_rule():
    chosen = choose("What time is it?", history_tokens=7000, budget_tokens=8000)
    assert (chosen.name, chosen.max_tokens) == ("long_session", 1024)
    assert chosen.reason == "the history is ~7000 tokens, 88% of the 8000-token budget"
    assert chosen.system_prompt.endswith("Keep answers brief: this conversation is long.")


def test_after_a_tool_turn_a_plain_follow_up_stays_tool_heavy_but_reasoning_wins():
    assert choose("and in Paris?", used_tools=True).name == "tool_heavy"
    assert choose("and in Paris?", used_tools=False).name == "short_factual"
    assert choose("Explain why the sky is blue", used_tools=True).name == "analytical"


def test_each_strategy_sets_sampling_and_keeps_the_system_prompt_first():
    factual = choose("Who is there?")
    analytical = choose("Explain the plan")
    assert (factual.temperature, factual.max_tokens) == (0.3, 512)
    assert (analytical.temperature, analytical.max_tokens) == (0.6, 2048)
    assert analytical.system_prompt.startswith("Be helpful.\n\n")
    assert "system_prompt" not in analytical.record()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_strategy_is_sent_upstream_and_recorded(avisitor, fake_groq, settings):
    settings.GROQ_FAST_MODEL = "fast-model"
    client = ChatClient(await avisitor())
    await client.connect()
    fake_groq.enqueue(text_reply("Paris."))
    frames = await client.turn("What is the capital of France?")
    assert frames[-1]["model"] == "fast-model"
    sent = fake_groq.requests[-1]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("fast-model", 0.3, 512)
    assert {tool["function"]["name"] for tool in sent["tools"]} >= {"current_time", "calculate"}
    assert sent["messages"][0]["content"].endswith("Answer in one or two sentences.")
    reply = (await events_of(client.session_id))[-1]
    assert reply.data["model"] == "fast-model"
    assert reply.data["strategy"]["name"] == "short_factual"
    assert reply.data["strategy"]["reason"] == "a short question (30 characters)"
    assert "current_time" in reply.data["tools_offered"]
    await client.close()
