"""The offline demo model: answers without a key, through the same interface as Groq.

It streams a canned reply word by word, calls the time, calculator, status and
session-search tools when asked, and writes a plain extractive summary, so every other part of the
product (streaming, tools, recording, summaries) runs without a network.
"""

import asyncio
import json
import re
import uuid
import zoneinfo
from collections import Counter
from collections.abc import AsyncGenerator
from functools import cache
from typing import Any

from .types import Finish, JsonAnswer, StreamItem, TextDelta, ToolCall, Usage

WORD_DELAY_SECONDS = 0.03
_SEARCH = re.compile(
    r"\b(?:search|find|look)\b.*?\b(?:sessions?|chats?|conversations?)\b.*?\b(?:for|about|mentioning)\s+(.+)",
    re.IGNORECASE,
)
_ARITHMETIC = re.compile(r"[\d(][\d\s.()+\-*/%^]*[\d)]")
_TIMEZONE = re.compile(r"\b([A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?|UTC)\b")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do for from has have how i in is it me my of on or please so tell "
    "that the this to was what when where which who why will with you your".split()
)


# Places people name that are not the city of an IANA zone.
_PLACE_ALIASES = {
    "beijing": "Asia/Shanghai",
    "california": "America/Los_Angeles",
    "delhi": "Asia/Kolkata",
    "india": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "washington": "America/New_York",
}


_REGIONS = frozenset("Africa America Asia Atlantic Australia Europe Indian Pacific".split())
# Zone names that are also everyday words ("Pacific/Wake", "Australia/West").
_NOT_PLACES = frozenset("center central east eastern general knox midway north resolute south troll wake west".split())


@cache
def _places() -> dict[str, str]:
    """Map a place's name ("tokyo", "new york") to its IANA zone, from the zones this machine knows."""
    places: dict[str, str] = {}
    for zone in sorted(zoneinfo.available_timezones()):
        parts = zone.split("/")
        name = parts[-1].replace("_", " ").lower()
        if len(parts) >= 2 and parts[0] in _REGIONS and name not in _NOT_PLACES:
            places.setdefault(name, zone)
    places.update(_PLACE_ALIASES)
    return places


def _zone_named(text: str) -> str:
    """The time zone the text names: an IANA name, else the longest place name in it, else UTC."""
    if match := _TIMEZONE.search(text):
        return match.group(1)
    lowered = text.lower()
    named = [place for place in _places() if re.search(rf"\b{re.escape(place)}\b", lowered)]
    return _places()[max(named, key=len)] if named else "UTC"


def _offered(tools: list[dict[str, Any]], name: str) -> bool:
    return any(tool.get("function", {}).get("name") == name for tool in tools)


def _tool_reply(message: dict[str, Any]) -> str:
    """Phrase a tool result the way a model would."""
    try:
        payload = json.loads(message.get("content") or "null")
    except ValueError:
        payload = message.get("content")
    if isinstance(payload, dict) and payload.get("ok") is False:
        return f"The tool failed: {payload.get('error', 'unknown error')}."
    result = payload.get("result") if isinstance(payload, dict) else payload
    if isinstance(result, dict) and "iso" in result:
        return f"It is {result['local_time']} on {result['weekday']} in {result['timezone']}."
    if isinstance(result, list):
        if not result:
            return "I found no earlier session of yours about that."
        titles = "; ".join(row.get("title") or row.get("started_at", "")[:10] for row in result)
        return f"I found {len(result)} earlier session(s) of yours: {titles}."
    if isinstance(result, dict) and "expression" in result:
        return f"{result['expression']} = {result['result']}."
    if isinstance(result, dict) and "cpu_percent" in result:
        return (
            f"CPU is at {result['cpu_percent']}%, memory at {result['memory_percent']}%, "
            f"and the machine has been up for {result['uptime_human']}."
        )
    return f"The tool returned: {json.dumps(result)}"


def _tool_call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(call_id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments=json.dumps(arguments))


def _decide(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ToolCall | str:
    """Return the tool call to make, or the text to say."""
    last = messages[-1] if messages else {"role": "user", "content": ""}
    if last.get("role") == "tool":
        return _tool_reply(last)
    text = str(last.get("content") or "")
    lowered = text.lower()
    if _offered(tools, "current_time") and re.search(r"\b(time|clock|date|day is it)\b", lowered):
        return _tool_call("current_time", {"timezone": _zone_named(text)})
    if _offered(tools, "sessions_search") and (match := _SEARCH.search(text)):
        return _tool_call("sessions_search", {"query": match.group(1).strip(" ?.!\"'")})
    if _offered(tools, "calculate"):
        expression = max(_ARITHMETIC.findall(text), key=len, default="")
        if re.search(r"\d\s*[+\-*/%^]+\s*[\d(]", expression):
            return _tool_call("calculate", {"expression": expression.strip()})
    if _offered(tools, "system_status") and re.search(r"\b(status|cpu|memory|uptime|load)\b", lowered):
        return _tool_call("system_status", {})
    quoted = text if len(text) <= 200 else text[:200] + "…"
    return (
        f'(Offline demo model) You said: "{quoted}". I am not a real language model: I stream this '
        "canned reply word by word so you can try the product without a key. Ask me what time it is "
        "(for example in Tokyo), to work out 12 * (3 + 4), for the system status, or to search "
        "your earlier sessions for a word, to see a tool call. Set GROQ_API_KEY "
        "for real answers."
    )


def _summary_of(transcript: str) -> dict[str, Any]:
    """Build an extractive summary from the transcript's user lines."""
    said = [line[len("User: ") :].strip() for line in transcript.splitlines() if line.startswith("User: ")]
    if not said and transcript.strip():
        # Notes on the parts of a long conversation, not a transcript: keep their opening.
        text = " ".join(transcript.split())[:400]
        return {"title": text[:57] + "...", "text": text, "key_topics": [], "action_items": [], "sentiment": "neutral"}
    words = [w for line in said for w in re.findall(r"[a-z][a-z'/_-]{2,}", line.lower()) if w not in _STOPWORDS]
    topics = [word for word, _ in Counter(words).most_common(3)]
    first = said[0] if said else "an empty conversation"
    title = first if len(first) <= 60 else first[:57] + "..."
    text = f'The visitor sent {len(said)} message(s), starting with: "{first[:200]}". (Offline extractive summary.)'
    return {"title": title, "text": text, "key_topics": topics, "action_items": [], "sentiment": "neutral"}


class OfflineChatModel:
    """A deterministic stand-in model that needs no key and no network."""

    mode = "offline"
    model = "offline-demo"
    fast_model = "offline-demo"

    async def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield a canned reply word by word, or a tool call when one fits (the sampling options do not apply)."""
        decision = _decide(messages, tools)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        if isinstance(decision, ToolCall):
            yield decision
            yield Usage(prompt_tokens=prompt_tokens, completion_tokens=8)
            yield Finish(reason="tool_calls", request_id=None)
            return
        words = re.findall(r"\S+\s*", decision)
        for word in words:
            await asyncio.sleep(WORD_DELAY_SECONDS)
            yield TextDelta(word)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words))
        yield Finish(reason="stop", request_id=None)

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> JsonAnswer:
        """Return an extractive summary of the transcript in the last message, as JSON (whatever `schema` asks).

        Its usage counts words, as the offline replies do.
        """
        transcript = str(messages[-1].get("content") or "") if messages else ""
        text = json.dumps(_summary_of(transcript))
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
        return JsonAnswer(text=text, model=model or self.model, usage=usage)
