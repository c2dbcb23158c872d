"""Summaries survive real model output: synonyms, fences, prose, strings for lists, a re-ask, structured outputs."""

import json
import logging
import math
from decimal import Decimal

import pytest

from audit import services
from audit.costs import cost_usd
from audit.models import Summary, SummaryStatus
from audit.summaries import (
    PartNoteAnswer,
    SummaryAnswer,
    SummaryInvalid,
    answer_parse,
    answer_schema,
    summary_parse,
    transcript_build,
    transcript_parts,
)
from audit.tasks import SUMMARY_MAX_RETRIES
from chat.context import tokens_estimate

from .fake_groq import json_reply, json_validate_failed_reply
from .test_records import session_with_messages

GOOD = {
    "title": "Trip to Lisbon",
    "text": "The visitor planned a trip to Lisbon.",
    "key_topics": ["lisbon"],
    "action_items": [],
    "sentiment": "positive",
}
SECRET = "ZEBRA-7731"  # only ever in the model's answers: must not reach logs or the stored error


def summary_requests(fake) -> list[dict]:
    return [request for request in fake.requests if request.get("response_format")]


# --- Reading one answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"summary": "Talked about trains.", "topics": ["trains"], "actions": ["book"], "mood": "positive"},
        {"summary_text": "Talked about trains.", "keywords": ["trains"], "todos": ["book"], "sentiment": "positive"},
        {"description": "Talked about trains.", "key_topics": ["trains"], "next_steps": ["book"], "mood": "positive"},
        {"Text": "Talked about trains.", "keyTopics": ["trains"], "Action Items": ["book"], "Sentiment": "positive"},
        {"summary": {"text": "Talked about trains.", "key_topics": ["trains"], "action_items": ["book"]}},
    ],
)
def test_a_summary_under_common_synonyms_of_its_keys_is_accepted(answer):
    fields = summary_parse(json.dumps(answer), model="m")
    assert fields.text == "Talked about trains."
    assert fields.key_topics == ["trains"] and fields.action_items == ["book"]
    assert fields.title == "Talked about trains"  # no title: the first sentence names it


@pytest.mark.parametrize(
    "raw",
    [
        "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
        "```\n" + json.dumps(GOOD) + "\n```",
        "Here is the summary: " + json.dumps(GOOD) + " Hope this helps!",
        "Sure {not json}. " + json.dumps(GOOD) + "\nAnything else?",
        json.dumps(json.dumps(GOOD)),  # the object sent as a JSON string
        '{"title": "Trip to Lisbon", "text": "The visitor planned\na trip to Lisbon."}',  # a raw line break
    ],
)
def test_an_object_in_a_fence_in_prose_or_in_a_string_is_read(raw):
    fields = summary_parse(raw, model="m")
    assert fields.title == "Trip to Lisbon"
    assert " ".join(fields.text.split()) == "The visitor planned a trip to Lisbon."


def test_a_string_where_a_list_belongs_is_split_into_items():
    answer = {
        "text": "Planned a trip.",
        "key_topics": "trains, hotels, budget",
        "action_items": "- Book the 9:15 train, second class\n- Call the hotel\n\n* Send the budget",
    }
    fields = summary_parse(json.dumps(answer), model="m")
    assert fields.key_topics == ["trains", "hotels", "budget"]
    assert fields.action_items == ["Book the 9:15 train, second class", "Call the hotel", "Send the budget"]
    answer.update(key_topics="1. trains; 2. hotels", action_items='["Book", "Call"]')
    fields = summary_parse(json.dumps(answer), model="m")
    assert (fields.key_topics, fields.action_items) == (["trains", "hotels"], ["Book", "Call"])


def test_list_items_are_stripped_blanks_dropped_and_capped_at_twenty():
    answer = {"text": "t", "key_topics": ["  a  ", "", "   ", 7, None, {"topic": "b"}], "action_items": ["x"] * 30}
    fields = summary_parse(json.dumps(answer), model="m")
    assert fields.key_topics == ["a", "7", "b"]
    assert fields.action_items == ["x"] * 20


@pytest.mark.parametrize(
    ("given", "stored"),
    [("POSITIVE", "positive"), (" Mixed. ", "mixed"), ("ecstatic", "neutral"), (3, "neutral"), (None, "neutral")],
)
def test_sentiment_is_read_in_any_case_and_an_unknown_one_is_neutral(given, stored):
    assert summary_parse(json.dumps({"text": "t", "sentiment": given}), model="m").sentiment == stored


def test_a_long_title_is_cut_to_the_column():
    assert len(summary_parse(json.dumps({"text": "t", "title": "w" * 500}), model="m").title) == 200


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "the summary answer was empty"),
        (f"I cannot summarize {SECRET}.", "held no JSON object"),
        (json.dumps({"title": SECRET}), "text: Field required"),
        (json.dumps({"summary": f"{SECRET}", "topics": 5}), "key_topics: Input should be a valid list"),
        (json.dumps({"text": "   ", "note": SECRET}), "text: String should have at least 1 character"),
    ],
)
def test_an_unusable_answer_is_described_without_quoting_it(raw, problem):
    with pytest.raises(SummaryInvalid) as caught:
        summary_parse(raw, model="m")
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None  # pydantic's error, which quotes values, is not chained


@pytest.mark.parametrize(
    "raw",
    ['{"summary": "A note."}', '```json\n{"note": "A note."}\n```', 'Note: {"text": ["A", "note."]}'],
)
def test_part_notes_are_read_as_leniently(raw):
    assert answer_parse(raw, shape=PartNoteAnswer).summary == "A note."


def test_the_schema_asks_for_every_key_and_no_other():
    schema = answer_schema(shape=SummaryAnswer)
    assert schema["required"] == ["title", "text", "key_topics", "action_items", "sentiment"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["sentiment"]["enum"] == ["positive", "neutral", "negative", "mixed"]
    assert answer_schema(shape=PartNoteAnswer)["required"] == ["summary"]


# --- Through the task, against the fake Groq server ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_summary_whose_text_is_named_summary_is_stored_through_the_task(fake_groq):
    answer = {"title": "Trains", "summary": "The visitor asked about trains.", "topics": "trains; Porto"}
    fake_groq.enqueue(json_reply(json.dumps(answer)))
    session = session_with_messages("Which trains go to Porto?", "Several.")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.attempts) == (SummaryStatus.DONE, 1)
    assert summary.text == "The visitor asked about trains."
    assert summary.key_topics == ["trains", "Porto"] and summary.sentiment == "neutral"
    assert len(summary_requests(fake_groq)) == 1


@pytest.mark.django_db(transaction=True)
def test_prose_around_the_object_that_groq_rejects_as_json_is_still_read(fake_groq):
    """Groq answers 400 json_validate_failed with the text it generated; that text is read like any answer."""
    fake_groq.enqueue(json_validate_failed_reply(f"Here is the summary:\n```json\n{json.dumps(GOOD)}\n```\nEnjoy!"))
    session = session_with_messages("Plan my Lisbon trip", "Sure.")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.title, summary.attempts) == (SummaryStatus.DONE, "Trip to Lisbon", 1)
    assert len(summary_requests(fake_groq)) == 1


@pytest.mark.django_db(transaction=True)
def test_an_unusable_answer_is_asked_for_again_with_what_was_wrong(fake_groq):
    first = json.dumps({"title": "Trip", "notes": "no text key"})
    fake_groq.enqueue(json_reply(first), json_reply(json.dumps(GOOD)))
    session = session_with_messages("Plan my Lisbon trip", "Sure.")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.title, summary.attempts) == (SummaryStatus.DONE, "Trip to Lisbon", 1)
    asked, again = summary_requests(fake_groq)
    assert again["messages"][: len(asked["messages"])] == asked["messages"]
    assert again["messages"][-2] == {"role": "assistant", "content": first}
    assert again["messages"][-1]["role"] == "user"
    assert "text: Field required" in again["messages"][-1]["content"]


@pytest.mark.django_db(transaction=True)
def test_two_unusable_answers_count_as_one_failed_try_then_the_retry_succeeds(fake_groq):
    fake_groq.enqueue(json_reply("this is not json"), json_reply('{"title": "still no text"}'))
    session = session_with_messages("hello", "hi")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    # The retry (a new try, with a new claim) got fake Groq's default answer.
    assert (summary.status, summary.title, summary.attempts) == (SummaryStatus.DONE, "Fake summary", 2)
    assert len(summary_requests(fake_groq)) == 3


@pytest.mark.django_db(transaction=True)
def test_answers_unusable_on_every_try_fail_the_summary_without_logging_or_storing_their_text(fake_groq, caplog):
    caplog.set_level(logging.INFO)  # the groq SDK logs whole requests at DEBUG, which is its business
    unusable = [json_reply(f"No summary today, {SECRET}."), json_reply(json.dumps({"title": SECRET}))]
    fake_groq.enqueue(*unusable * (SUMMARY_MAX_RETRIES + 1))
    session = session_with_messages("hello", "hi")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.attempts) == (SummaryStatus.FAILED, SUMMARY_MAX_RETRIES + 1)
    assert "held no JSON object" in summary.error and "after a re-ask" in summary.error
    assert "text: Field required" in summary.error
    assert len(summary_requests(fake_groq)) == 2 * (SUMMARY_MAX_RETRIES + 1)
    assert "asking the model again" in caplog.text and "failed for good" in caplog.text
    assert SECRET not in summary.error
    assert SECRET not in caplog.text  # messages and any logged traceback


@pytest.mark.django_db(transaction=True)
def test_a_model_with_structured_outputs_is_sent_the_schema_and_others_json_mode(fake_groq, settings):
    settings.GROQ_STRUCTURED_OUTPUT_MODELS = ["schema-model"]
    settings.GROQ_SUMMARY_MODEL = "schema-model"
    fake_groq.enqueue(json_reply(json.dumps(GOOD)))
    services.session_end(session_id=session_with_messages("Plan my Lisbon trip", "Sure.").id)
    settings.GROQ_SUMMARY_MODEL = "plain-model"
    services.session_end(session_id=session_with_messages("Which trains go to Porto?", "Several.").id)
    structured, plain = summary_requests(fake_groq)
    assert structured["model"] == "schema-model"
    assert structured["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "SummaryAnswer", "schema": answer_schema(shape=SummaryAnswer), "strict": False},
    }
    assert plain["model"] == "plain-model"
    assert plain["response_format"] == {"type": "json_object"}
    assert Summary.objects.filter(status=SummaryStatus.DONE).count() == 2


@pytest.mark.django_db(transaction=True)
def test_part_notes_of_a_long_session_get_their_own_schema_and_the_same_leniency(fake_groq, settings):
    settings.CHAT_SUMMARY_PART_CHARS = 400
    settings.GROQ_STRUCTURED_OUTPUT_MODELS = ["schema-model"]
    settings.GROQ_SUMMARY_MODEL = "schema-model"
    session = session_with_messages(*[f"message {n} " + "about the Lisbon trip " * 4 for n in range(12)])
    count = len(transcript_parts(transcript_build(session_id=session.id, through_seq=12), limit=400))
    notes = [json_reply(f'Notes:\n```json\n{{"note": "Part {n} went fine."}}\n```') for n in range(1, count + 1)]
    fake_groq.enqueue(*notes, json_reply(json.dumps(GOOD)))
    services.session_end(session_id=session.id)
    requests = summary_requests(fake_groq)
    assert len(requests) == count + 1
    names = [request["response_format"]["json_schema"]["name"] for request in requests]
    assert names == ["PartNoteAnswer"] * count + ["SummaryAnswer"]
    assert f"Part {count}: Part {count} went fine." in requests[-1]["messages"][-1]["content"]
    assert Summary.objects.get(session=session).status == SummaryStatus.DONE


# --- What writing a summary cost ------------------------------------------------------------

PRICE = (Decimal("0.59"), Decimal("0.79"))  # USD per million tokens, input and output


@pytest.mark.django_db(transaction=True)
def test_what_writing_a_summary_cost_is_recorded_with_its_re_ask_and_failed_try(fake_groq, settings):
    settings.LLM_PRICES = {settings.GROQ_SUMMARY_MODEL: PRICE}
    # The first try: an unusable answer and an unusable re-ask; the retry: fake Groq's default (30 + 15 tokens).
    fake_groq.enqueue(json_reply("not json", usage=(100, 10)), json_reply('{"title": "no text"}', usage=(120, 12)))
    session = session_with_messages("hello", "hi")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.attempts) == (SummaryStatus.DONE, 2)
    assert (summary.prompt_tokens, summary.completion_tokens) == (250, 37)
    assert summary.cost_usd == cost_usd(model=settings.GROQ_SUMMARY_MODEL, prompt_tokens=250, completion_tokens=37)
    assert summary.cost_usd == (250 * PRICE[0] + 37 * PRICE[1]) / 1_000_000


@pytest.mark.django_db(transaction=True)
def test_an_answer_without_usage_is_charged_by_estimate(fake_groq, settings):
    """Groq's 400 json_validate_failed carries the text it generated but no usage: the tokens are estimated."""
    settings.LLM_PRICES = {settings.GROQ_SUMMARY_MODEL: PRICE}
    rejected = f"Here is the summary:\n```json\n{json.dumps(GOOD)}\n```\nEnjoy!"
    fake_groq.enqueue(json_validate_failed_reply(rejected))
    session = session_with_messages("Plan my Lisbon trip", "Sure.")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert summary.status == SummaryStatus.DONE
    assert summary.completion_tokens == math.ceil(len(rejected) / 4)
    assert summary.prompt_tokens == tokens_estimate(summary_requests(fake_groq)[0]["messages"])
    assert summary.cost_usd > 0


@pytest.mark.django_db(transaction=True)
def test_a_summary_that_failed_for_good_still_shows_what_its_tries_cost(fake_groq, settings):
    settings.LLM_PRICES = {}  # no price: the tokens are kept, the cost stays 0
    fake_groq.enqueue(*[json_reply("never a summary", usage=(10, 1))] * 2 * (SUMMARY_MAX_RETRIES + 1))
    session = session_with_messages("hello", "hi")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert summary.status == SummaryStatus.FAILED
    calls = 2 * (SUMMARY_MAX_RETRIES + 1)
    assert (summary.prompt_tokens, summary.completion_tokens, summary.cost_usd) == (10 * calls, calls, 0)
