"""Groq through the official SDK: the only module that imports `groq`."""

import asyncio
import contextlib
import re
import weakref
from collections.abc import AsyncGenerator
from typing import Any, cast

import groq
import httpx

from .chunks import chunks_read
from .types import LLMError, StreamItem, retry_after_seconds


def _error_from(exc: Exception) -> LLMError:
    """Map an SDK or transport failure to the error code the client sees."""
    if isinstance(exc, groq.RateLimitError):
        retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
        return LLMError("llm_rate_limited", "The model is rate limited; try again shortly.", retry_after=retry_after)
    if isinstance(exc, groq.APIStatusError):
        return LLMError("llm_unavailable", f"The model service answered {exc.status_code}.")
    if isinstance(exc, groq.APITimeoutError | httpx.TimeoutException):
        return LLMError("llm_unavailable", "The model service timed out.")
    return LLMError("llm_unavailable", "The model service failed mid-reply." if str(exc) else "The model failed.")


def _failed_generation(exc: groq.BadRequestError) -> str | None:
    """Return the reply Groq generated and then rejected as invalid JSON, if that is what the error is."""
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    if isinstance(body, dict) and body.get("code") == "json_validate_failed":
        rejected = body.get("failed_generation")
        return rejected if isinstance(rejected, str) else None
    return None


# The SDK's chat.completions.create posts here. It first walks the whole request
# (every message of the history) through the SDK's type-driven transform, which
# has nothing to change in these plain JSON dicts and cost ~1 ms of CPU per turn
# at a few messages, more as the history grows; the client's own `post` keeps
# its auth, retries, timeouts and errors. Its raw response is read as it streams.
CHAT_PATH = "/openai/v1/chat/completions"

# Building a client costs ~20 ms of CPU (its SSL context), which would stall
# every socket of the process on each turn: keep one per event loop and
# settings. Clients hold connections bound to their loop, hence the key.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, groq.AsyncGroq]]" = (
    weakref.WeakKeyDictionary()
)


class GroqChatModel:
    """Stream chat completions from Groq (or any server speaking its API)."""

    mode = "groq"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        max_retries: int,
        timeout: float,
        connect_timeout: float,
        max_connections: int = 1000,
        first_token_timeout: float = 30.0,
        token_timeout: float = 30.0,
        fast_model: str | None = None,
    ) -> None:
        self.model = model
        self.fast_model = fast_model or model
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self._options = (api_key, base_url, max_retries, timeout, connect_timeout, max_connections)

    def _client_new(self) -> groq.AsyncGroq:
        api_key, base_url, max_retries, timeout, connect_timeout, max_connections = self._options
        return groq.AsyncGroq(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # The shared client's pool bounds the replies streaming at once in
            # this process (the SDK's default is 100).
            http_client=groq.DefaultAsyncHttpxClient(
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100)
            ),
        )

    def _client_shared(self) -> groq.AsyncGroq:
        """Return this loop's client for these settings, made once."""
        per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
        if self._options not in per_loop:
            per_loop[self._options] = self._client_new()
        return per_loop[self._options]

    async def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield text deltas as they arrive, then the merged tool calls, usage and finish.

        Closing this generator (or cancelling the task iterating it) leaves the
        `async with` blocks, which closes the upstream HTTP stream at once.
        """
        options: dict[str, Any] = {"model": model or self.model, "messages": messages, "stream": True}
        if tools:
            options["tools"] = tools
        if temperature is not None:
            options["temperature"] = temperature
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        client = self._client_shared()
        loop = asyncio.get_running_loop()
        try:
            async with contextlib.AsyncExitStack() as stack:
                first_deadline = loop.time() + self.first_token_timeout
                try:
                    # The first-token budget also covers the wait for the answer to start.
                    async with asyncio.timeout_at(first_deadline):
                        response = await client.post(CHAT_PATH, cast_to=httpx.Response, body=options, stream=True)
                    stack.push_async_callback(response.aclose)
                except TimeoutError:
                    raise LLMError(
                        "llm_unavailable", "The model service took too long to send the first token."
                    ) from None
                items = chunks_read(
                    aiter(response.aiter_bytes()), first_deadline=first_deadline, token_timeout=self.token_timeout
                )
                stack.push_async_callback(items.aclose)
                async for item in items:
                    yield item
        except (groq.APIError, httpx.HTTPError) as exc:
            raise _error_from(exc) from exc

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> str:
        """Return one whole reply, asked for in JSON mode, or shaped by `schema` (structured outputs) when given.

        A reply Groq itself rejects as not fitting (400 `json_validate_failed`)
        is returned as the text it rejected: the caller validates every answer
        and may still read it (JSON in prose, a key named differently).
        """
        response_format: dict[str, Any] = {"type": "json_object"}
        if schema is not None:
            # Best effort (strict false): strict mode is on fewer models, and the caller validates anyway.
            name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))[:64]
            response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}
        try:
            # Plain dicts where the SDK's signature names its TypedDicts: the same JSON.
            completion = await self._client_shared().chat.completions.create(
                model=model or self.model,
                messages=cast(Any, messages),
                response_format=cast(Any, response_format),
                temperature=0.2,
            )
        except groq.BadRequestError as exc:
            rejected = _failed_generation(exc)
            if rejected is None:
                raise _error_from(exc) from exc
            return rejected
        except (groq.APIError, httpx.HTTPError) as exc:
            raise _error_from(exc) from exc
        # A body that is not a completion (a proxy's page, say) comes back from the SDK as a string.
        choices = getattr(completion, "choices", None)
        if not choices:
            raise LLMError("llm_unavailable", "The model returned no answer.")
        return choices[0].message.content or ""
