"""A main model and a spare: the spare answers when the main one is rate limited or down (after its retries)."""

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from .types import ChatModel, Fallback, JsonAnswer, LLMError, StreamItem

# Failures of the main model that the spare may answer for: not a bad request.
FALLBACK_CODES = {"llm_rate_limited", "llm_unavailable"}


class FallbackChatModel:
    """Ask the main model; if it fails before its reply began, announce a `Fallback` and ask the spare.

    A reply that began (text or a tool call came) is not asked again: its
    failure is the turn's. Once fallen back, later calls (the turn's next
    tool rounds) go to the spare straight away; one is made per turn.
    """

    def __init__(self, main: ChatModel, spare: ChatModel) -> None:
        self.main, self.spare = main, spare
        self.mode, self.model, self.fast_model = main.mode, main.model, main.fast_model
        self.fallen_back = False

    async def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield the main model's reply, or a `Fallback` and then the spare's."""
        options: dict[str, Any] = {"messages": messages, "tools": tools, "temperature": temperature}
        options["max_tokens"] = max_tokens
        if not self.fallen_back:
            began = False
            try:
                # aclosing: a cancel or a stop closes the main model's stream (and its HTTP response) at once.
                async with aclosing(self.main.stream(model=model, **options)) as items:
                    async for item in items:
                        began = True
                        yield item
                return
            except LLMError as exc:
                if began or exc.code not in FALLBACK_CODES:
                    raise
                self.fallen_back = True
                yield Fallback(model=self.spare.model, replaced=model or self.main.model, reason=exc.code)
        async with aclosing(self.spare.stream(**options)) as items:
            async for item in items:
                yield item

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> JsonAnswer:
        """Return the main model's JSON answer, or the spare's when the main one is rate limited or down.

        The spare is asked in plain JSON mode: the schema was chosen for the main
        model (a server may not take structured outputs), and the caller validates
        every answer anyway.
        """
        try:
            return await self.main.complete_json(messages=messages, model=model, schema=schema)
        except LLMError as exc:
            if exc.code not in FALLBACK_CODES:
                raise
        return await self.spare.complete_json(messages=messages)
