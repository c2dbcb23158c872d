"""Server-sent events of a streaming chat completion, decoded to plain dicts.

The groq SDK turns every chunk into a tree of pydantic models; at a few
hundred chunks a second per process that construction was most of the CPU a
token cost (~55 µs of ~90 µs a chunk, measured against the fake server). The
chunks are read here as the JSON they are, from the SDK's raw streaming
response, so requests, retries and HTTP errors still go through the SDK.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

DONE = "[DONE]"


class StreamErrorEvent(Exception):
    """The server sent an error in the middle of the stream."""


class StreamCutShort(StreamErrorEvent):
    """The body ended without `[DONE]`: a proxy or the server closed it mid-reply."""


async def sse_chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Yield each event's JSON object from the lines of an SSE body, until `[DONE]`.

    An event's `data:` lines are joined with newlines, as the SSE format has
    it; comments and other fields are skipped. An event carrying an `error`,
    or named `error`, raises StreamErrorEvent with the server's message; a
    body that ends without `[DONE]` raises StreamCutShort.
    """
    data: list[str] = []
    event = ""
    done = False
    async for line in lines:
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            continue
        if not data:
            event = ""
            continue
        text = "\n".join(data)
        data, name = [], event
        event = ""
        if text.startswith(DONE):
            done = True
            break
        chunk = json.loads(text)
        if name == "error" or (isinstance(chunk, dict) and chunk.get("error")):
            error = chunk.get("error") if isinstance(chunk, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise StreamErrorEvent(message if isinstance(message, str) and message else "an error in the stream")
        if isinstance(chunk, dict):
            yield chunk
    if not done:
        raise StreamCutShort("the stream ended before [DONE]")
