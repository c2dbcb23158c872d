"""The rolling summary of the turns that no longer fit the model's context budget."""

import json
import logging

from audit.models import Event, EventType
from audit.summaries import transcript_text

from .context import answer_usage
from .llm import LLMError, Usage
from .llm.types import ChatModel

logger = logging.getLogger(__name__)

EARLIER_MAX_CHARS = 1500
TRANSCRIPT_MAX_CHARS = 12_000
INSTRUCTIONS = (
    "You keep the running memory of a chat for the assistant. Merge the previous summary and the new "
    "transcript into one summary of at most 120 words: what the user wants, facts they gave, decisions "
    'taken, questions still open. Answer with one JSON object: {"summary": "..."}.'
)


def _extractive(*, earlier: str, dropped: list[Event]) -> str:
    """Keep the user's own words when the model cannot write the summary (the newest first to stay)."""
    if len(earlier) > EARLIER_MAX_CHARS // 2:
        earlier = "…" + earlier[-(EARLIER_MAX_CHARS // 2) :]
    head = f"{earlier} The user also said: " if earlier else "The user said: "
    quotes: list[str] = []
    room = EARLIER_MAX_CHARS - len(head)
    for event in reversed(dropped):
        if event.type != EventType.USER_MESSAGE:
            continue
        quote = " ".join(event.content.split())[:100]
        if len(quote) + 3 > room:
            break
        quotes.insert(0, quote)
        room -= len(quote) + 3
    return head + " / ".join(quotes)


# What the model call cost: the model that answered, its tokens, whether they are estimated.
Spent = tuple[str, Usage, bool]


async def earlier_extend(*, model: ChatModel, earlier: str, dropped: list[Event]) -> tuple[str, Spent | None]:
    """Return the rolling summary extended with the dropped turns (by the fast model; extractive if it fails).

    Also returns what the model call used, to be charged to the turn (None when no answer came).
    """
    transcript = transcript_text(dropped)[-TRANSCRIPT_MAX_CHARS:]
    prompt = f"Previous summary: {earlier or '(none)'}\n\nNew transcript:\n{transcript}"
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": prompt}]
    spent: Spent | None = None
    try:
        answer = await model.complete_json(messages=messages, model=model.fast_model)
        usage, estimated = answer_usage(answer, messages=messages)
        spent = (answer.model, usage, estimated)
        data = json.loads(answer.text)
        text = data.get("summary") or data.get("text") if isinstance(data, dict) else None
        if isinstance(text, str) and text.strip():
            return text.strip()[:EARLIER_MAX_CHARS], spent
        # Not the answer itself: it retells the visitor's conversation.
        logger.warning("the rolling summary came back without text (%d characters)", len(answer.text))
    except (LLMError, ValueError) as exc:
        logger.warning("could not extend the rolling summary: %s", exc)
    return _extractive(earlier=earlier, dropped=dropped), spent
