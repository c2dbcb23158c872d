"""Groq through the official SDK: the only module that imports `groq`."""

from collections.abc import AsyncGenerator
from typing import Any, cast

import groq
import httpx

from .chunks import json_format, request_body, response_read, usage_from
from .clients import client_for_loop
from .types import JsonAnswer, LLMError, StreamItem, retry_after_seconds


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
        return client_for_loop(self._options, self._client_new)

    def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield text deltas as they arrive, then the merged tool calls, usage and finish.

        Closing the generator (or cancelling the task iterating it) closes the
        upstream HTTP stream at once.
        """
        body = request_body(
            model=model or self.model, messages=messages, tools=tools, temperature=temperature, max_tokens=max_tokens
        )
        client = self._client_shared()
        return response_read(
            lambda: client.post(CHAT_PATH, cast_to=httpx.Response, body=body, stream=True),
            first_token_timeout=self.first_token_timeout,
            token_timeout=self.token_timeout,
            failures=(groq.APIError, httpx.HTTPError),
            failure=_error_from,
        )

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> JsonAnswer:
        """Return one whole reply, asked for in JSON mode, or shaped by `schema` (structured outputs) when given.

        A reply Groq itself rejects as not fitting (400 `json_validate_failed`)
        is returned as the text it rejected: the caller validates every answer
        and may still read it (JSON in prose, a key named differently). Such an
        answer comes without usage.
        """
        model = model or self.model
        try:
            # Plain dicts where the SDK's signature names its TypedDicts: the same JSON.
            completion = await self._client_shared().chat.completions.create(
                model=model,
                messages=cast(Any, messages),
                response_format=cast(Any, json_format(schema)),
                temperature=0.2,
            )
        except groq.BadRequestError as exc:
            rejected = _failed_generation(exc)
            if rejected is None:
                raise _error_from(exc) from exc
            return JsonAnswer(text=rejected, model=model)
        except (groq.APIError, httpx.HTTPError) as exc:
            raise _error_from(exc) from exc
        # A body that is not a completion (a proxy's page, say) comes back from the SDK as a string.
        choices = getattr(completion, "choices", None)
        if not choices:
            raise LLMError("llm_unavailable", "The model returned no answer.")
        usage = getattr(completion, "usage", None)
        return JsonAnswer(
            text=choices[0].message.content or "",
            model=model,
            usage=usage_from(usage.model_dump()) if usage is not None else None,
        )
