"""Any server speaking OpenAI's chat-completions API (vLLM, Ollama, LM Studio, OpenRouter, OpenAI), over httpx.

`base_url` is the API root that `/chat/completions` is appended to, e.g.
`http://localhost:11434/v1`. The stream is read by the shared chunk reader
(`chunks.py`); usage is asked for with `stream_options.include_usage`.
"""

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from .chunks import json_format, request_body, response_read, usage_from
from .clients import client_for_loop
from .types import JsonAnswer, LLMError, StreamItem, retry_after_seconds

# Statuses worth another try, before a byte of the reply was read.
RETRIED = {408, 409, 429, 500, 502, 503, 504}
BACKOFF_SECONDS = 0.5
RETRY_AFTER_CAP_SECONDS = 8.0


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("retry-after"))


def _status_error(response: httpx.Response) -> LLMError:
    if response.status_code == 429:
        return LLMError(
            "llm_rate_limited", "The model is rate limited; try again shortly.", retry_after=_retry_after(response)
        )
    return LLMError("llm_unavailable", f"The model service answered {response.status_code}.")


def _transport_error(exc: httpx.HTTPError) -> LLMError:
    if isinstance(exc, httpx.TimeoutException):
        return LLMError("llm_unavailable", "The model service timed out.")
    if isinstance(exc, httpx.ConnectError):
        return LLMError("llm_unavailable", "The model service could not be reached.")
    return LLMError("llm_unavailable", "The model service failed mid-reply." if str(exc) else "The model failed.")


class OpenAICompatibleChatModel:
    """Stream chat completions from an OpenAI-compatible server."""

    mode = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
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
        self.max_retries = max_retries
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._options = (api_key, timeout, connect_timeout, max_connections)

    def _client_new(self) -> httpx.AsyncClient:
        api_key, timeout, connect_timeout, max_connections = self._options
        return httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100),
        )

    def _client_shared(self) -> httpx.AsyncClient:
        """Return this loop's client for these settings, made once."""
        return client_for_loop(self._options, self._client_new)

    async def _send(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST the request, retrying connection failures and retryable statuses; return a 2xx response."""
        client = self._client_shared()
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await client.send(client.build_request("POST", self.url, json=body), stream=stream)
            except httpx.TransportError as exc:
                if last:
                    raise _transport_error(exc) from exc
                await asyncio.sleep(BACKOFF_SECONDS * 2**attempt)
                continue
            if response.is_success:
                return response
            await response.aclose()
            if last or response.status_code not in RETRIED:
                raise _status_error(response)
            await asyncio.sleep(min(_retry_after(response) or BACKOFF_SECONDS * 2**attempt, RETRY_AFTER_CAP_SECONDS))
        raise AssertionError("unreachable")

    def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield text deltas as they arrive, then the merged calls, usage and finish; closing it closes the stream."""
        body = request_body(
            model=model or self.model, messages=messages, tools=tools, temperature=temperature, max_tokens=max_tokens
        )
        body["stream_options"] = {"include_usage": True}
        return response_read(
            lambda: self._send(body, stream=True),
            first_token_timeout=self.first_token_timeout,
            token_timeout=self.token_timeout,
            failures=(httpx.HTTPError,),
            failure=_transport_error,
        )

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> JsonAnswer:
        """Return one whole reply in JSON mode (or shaped by `schema` with `json_schema`, when given)."""
        model = model or self.model
        body = {"model": model, "messages": messages, "temperature": 0.2}
        body["response_format"] = json_format(schema)
        try:
            response = await self._send(body, stream=False)
            payload = response.json()
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        except ValueError as exc:
            raise LLMError("llm_unavailable", "The model returned no answer.") from exc
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise LLMError("llm_unavailable", "The model returned no answer.")
        usage = payload.get("usage")
        return JsonAnswer(
            text=(choices[0].get("message") or {}).get("content") or "",
            model=model,
            usage=usage_from(usage) if isinstance(usage, dict) else None,
        )
