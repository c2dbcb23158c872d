"""Rebuild the model's conversation from the recorded events."""

import json
from typing import Any

from audit.models import Event, EventType

from .llm import JsonAnswer, Usage


def _tool_message(event: Event) -> dict[str, Any]:
    data = event.data
    body = {"ok": True, "result": data.get("result")} if data.get("ok") else {"ok": False, "error": data.get("result")}
    return {"role": "tool", "tool_call_id": data.get("call_id", ""), "content": json.dumps(body, default=str)}


EARLIER_PREFIX = "Summary of the earlier part of this conversation: "
# After a cut, the history is brought down to this share of the budget, so the
# rolling summary is extended once every several turns, not on every turn.
CUT_TO_SHARE = 0.6
# Room kept for the rolling summary itself.
SUMMARY_TOKENS = 300

# No tokenizer is at hand offline: about four characters a token, plus a few
# tokens of framing per message, errs a little high for English text.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def text_tokens_estimate(text: str) -> int:
    """Estimate the tokens of a text."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def tokens_estimate(messages: list[dict[str, Any]]) -> int:
    """Estimate the prompt tokens of the messages."""
    total = 0
    for message in messages:
        text = str(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            text += call["function"]["name"] + call["function"]["arguments"]
        total += TOKENS_PER_MESSAGE + text_tokens_estimate(text)
    return total


def answer_usage(answer: JsonAnswer, *, messages: list[dict[str, Any]]) -> tuple[Usage, bool]:
    """Return what a `complete_json` answer used, and whether that is an estimate (the service sent no usage)."""
    if answer.usage is not None:
        return answer.usage, False
    return Usage(prompt_tokens=tokens_estimate(messages), completion_tokens=text_tokens_estimate(answer.text)), True


def last_turn_used_tools(events: list[Event]) -> bool:
    """Return whether the turn before the current one called tools."""
    user_messages = 0
    for event in reversed(events):
        if event.type == EventType.USER_MESSAGE:
            user_messages += 1
            if user_messages == 2:
                return False
        elif event.type == EventType.TOOL_CALL and user_messages == 1:
            return True
    return False


def messages_build(*, events: list[Event], system_prompt: str, earlier: str = "") -> list[dict[str, Any]]:
    """Return the chat messages for the model: system prompt, then the session's turns.

    Consecutive tool calls form one assistant message, followed by their
    results. A call left without a result (the turn was stopped while it ran)
    gets a "cancelled" result, because the API rejects unanswered calls.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    if earlier:
        messages.append({"role": "system", "content": f"{EARLIER_PREFIX}{earlier}"})
    unanswered: list[str] = []

    def answer_the_rest() -> None:
        for call_id in unanswered:
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"ok": False, "error": "cancelled"})}
            )
        unanswered.clear()

    previous_type = None
    for event in events:
        if event.type == EventType.TOOL_CALL:
            if previous_type != EventType.TOOL_CALL:
                answer_the_rest()
                messages.append({"role": "assistant", "content": None, "tool_calls": []})
            call_id = event.data.get("call_id", "")
            arguments = event.data.get("arguments", {})
            messages[-1]["tool_calls"].append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": event.data.get("name", ""),
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
            unanswered.append(call_id)
        elif event.type == EventType.TOOL_RESULT:
            call_id = event.data.get("call_id", "")
            if call_id in unanswered:
                unanswered.remove(call_id)
                messages.append(_tool_message(event))
        elif event.type == EventType.USER_MESSAGE:
            answer_the_rest()
            messages.append({"role": "user", "content": event.content})
        elif event.type == EventType.ASSISTANT_MESSAGE:
            answer_the_rest()
            if event.content:
                messages.append({"role": "assistant", "content": event.content})
        if event.type in (
            EventType.TOOL_CALL,
            EventType.TOOL_RESULT,
            EventType.USER_MESSAGE,
            EventType.ASSISTANT_MESSAGE,
        ):
            previous_type = event.type
    answer_the_rest()
    return messages


def turns_split(events: list[Event]) -> list[list[Event]]:
    """Split events into turns, each starting at a user message (whatever precedes the first joins it)."""
    turns: list[list[Event]] = []
    for event in events:
        if event.type == EventType.USER_MESSAGE or not turns:
            turns.append([])
        turns[-1].append(event)
    return turns


def window_cut(*, events: list[Event], system_prompt: str, earlier: str, budget: int) -> tuple[list, list]:
    """Split the events into (dropped, kept) so the kept history fits the budget.

    Nothing is dropped while everything fits. Otherwise whole turns go, oldest
    first (a tool call never leaves without its result), until the rest fits
    CUT_TO_SHARE of the budget; the newest turn always stays.
    """
    if tokens_estimate(messages_build(events=events, system_prompt=system_prompt, earlier=earlier)) <= budget:
        return [], events
    turns = turns_split(events)
    room = CUT_TO_SHARE * budget - tokens_estimate([{"content": system_prompt}]) - SUMMARY_TOKENS
    kept: list[list[Event]] = []
    for turn in reversed(turns):
        size = tokens_estimate(messages_build(events=turn, system_prompt="")) - TOKENS_PER_MESSAGE
        if kept and size > room:
            break
        kept.insert(0, turn)
        room -= size
    dropped = [event for turn in turns[: len(turns) - len(kept)] for event in turn]
    return dropped, [event for turn in kept for event in turn]
