"""Routing: pick each turn's strategy from the conversation. Deterministic: same input, same choice.

A strategy fixes the model (the main or the fast one), temperature,
`max_tokens`, the system prompt and whether tools are offered. The first rule
that matches wins, in this order:

1. `long_session`: the history fills most of the model's context budget, so
   answer briefly to leave room.
2. `tool_heavy`: the message asks, in so many words, for something a tool
   does (the time or date, arithmetic, server status, earlier sessions).
3. `analytical`: a long message, code, or words that ask for reasoning.
4. `tool_heavy` again for a plain follow-up ("and in Paris?") to a turn that
   used tools.
5. `short_factual`: a short question: the fast model, short answers.
6. `conversational`: everything else.

Tools stay offered in every strategy: a rule can misjudge a message, and the
model still reaches a tool it needs.
"""

import re
from dataclasses import asdict, dataclass
from typing import Any

LONG_SESSION_SHARE = 0.8
SHORT_QUESTION_CHARS = 120
ANALYTICAL_CHARS = 400

# Phrases, not single words: "explain the time complexity" must not look like a clock question.
_TOOL_PHRASES = re.compile(
    r"\bwhat(?:'s| is)? the (?:time|date)\b|\bwhat time\b|\btime (?:is it|now)\b|\btime in [A-Z]|"
    r"\bwhat day\b|\btoday'?s date\b|\bcurrent (?:time|date)\b|"
    r"\b(?:calculate|compute|work out)\b|\bhow much is \d|"
    r"\b(?:server|system) (?:status|load|health)\b|\b(?:cpu|memory|disk) (?:usage|load|space)\b|\buptime\b|"
    r"\b(?:earlier|previous|past|other|last) (?:sessions?|chats?|conversations?)\b|"
    r"\bwhat did (?:we|i) (?:talk|say|discuss|ask)\b",
    re.IGNORECASE,
)
_ARITHMETIC = re.compile(r"\d\s*[-+*/^%]\s*\(?\d")
_ANALYTICAL_WORDS = re.compile(
    r"\b(why|explain|analy[sz]e|compare|trade-?offs?|pros and cons|design|architecture|plan|"
    r"step by step|evaluate|critique|prove|derive|strategy)\b",
    re.IGNORECASE,
)
_QUESTION = re.compile(r"^\s*(who|what|when|where|which|how many|how much|is|are|does|do|can)\b|\?\s*$", re.I)

BRIEF = "Keep answers brief: this conversation is long."
STRUCTURED = "Reason step by step and structure the answer with short headings or lists."
FACTUAL = "Answer in one or two sentences."


@dataclass(frozen=True)
class Strategy:
    """How one turn is answered, and why."""

    name: str
    reason: str
    model: str
    temperature: float
    max_tokens: int
    system_prompt: str
    tools: bool

    def record(self) -> dict[str, Any]:
        """Return the choice as recorded on the turn (without the prompt text)."""
        data = asdict(self)
        del data["system_prompt"]
        return data


def strategy_choose(
    *,
    content: str,
    history_tokens: int,
    budget_tokens: int,
    last_turn_used_tools: bool,
    main_model: str,
    fast_model: str,
    system_prompt: str,
) -> Strategy:
    """Return the strategy for a turn whose user message is `content`."""

    def strategy(name: str, reason: str, **choice: Any) -> Strategy:
        extra = choice.pop("prompt", "")
        prompt = f"{system_prompt}\n\n{extra}" if extra else system_prompt
        return Strategy(name=name, reason=reason, system_prompt=prompt, **choice)

    if budget_tokens and history_tokens >= LONG_SESSION_SHARE * budget_tokens:
        share = round(100 * history_tokens / budget_tokens)
        return strategy(
            "long_session",
            f"the history is ~{history_tokens} tokens, {share}% of the {budget_tokens}-token budget",
            model=main_model, temperature=0.5, max_tokens=1024, tools=True, prompt=BRIEF,
        )  # fmt: skip
    if match := _TOOL_PHRASES.search(content) or _ARITHMETIC.search(content):
        return strategy(
            "tool_heavy",
            f"the message mentions {match.group(0).strip()!r}, which a tool answers",
            model=main_model, temperature=0.2, max_tokens=1024, tools=True,
        )  # fmt: skip
    asks = _ANALYTICAL_WORDS.search(content)
    if asks or len(content) > ANALYTICAL_CHARS or "```" in content:
        why = f"it asks to {asks.group(0).lower()!r}" if asks else "a long message or code"
        return strategy(
            "analytical", why, model=main_model, temperature=0.6, max_tokens=2048, tools=True, prompt=STRUCTURED
        )
    if last_turn_used_tools:
        return strategy(
            "tool_heavy",
            "the previous turn used tools",
            model=main_model, temperature=0.2, max_tokens=1024, tools=True,
        )  # fmt: skip
    if len(content) <= SHORT_QUESTION_CHARS and _QUESTION.search(content):
        return strategy(
            "short_factual",
            f"a short question ({len(content)} characters)",
            model=fast_model, temperature=0.3, max_tokens=512, tools=True, prompt=FACTUAL,
        )  # fmt: skip
    return strategy(
        "conversational", "no rule above matched", model=main_model, temperature=0.7, max_tokens=1024, tools=True
    )
