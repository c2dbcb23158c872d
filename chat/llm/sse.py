"""Server-sent events of a streaming chat completion, decoded to plain dicts.

The groq SDK turns every chunk into a tree of pydantic models; at a few
hundred chunks a second per process that construction was most of the CPU a
token cost (~55 µs of ~90 µs a chunk, measured against the fake server). The
chunks are read here as the JSON they are, from the SDK's raw streaming
response, so requests, retries and HTTP errors still go through the SDK.

The decoder is fed the bytes of each network read, not lines: httpx's line
iterator is two more async generators per chunk, and one read often holds
several events under load, which are then handled in one pass.
"""

import json
from collections.abc import Iterator
from typing import Any

DONE = "[DONE]"


class StreamErrorEvent(Exception):
    """The server sent an error in the middle of the stream."""


class StreamCutShort(StreamErrorEvent):
    """The body ended without `[DONE]`: a proxy or the server closed it mid-reply."""


class SSEDecoder:
    """Decode an SSE body fed read by read into each event's JSON object, until `[DONE]`.

    Lines end with LF, CR LF or CR, wherever the reads split them. An event's
    `data:` lines are joined with newlines, as the SSE format has it; comments
    and other fields are skipped. An event carrying an `error`, or named
    `error`, raises StreamErrorEvent with the server's message, after the
    events before it; a body that ends without `[DONE]` raises StreamCutShort
    from `end`. A chunk that is not JSON raises ValueError.
    """

    def __init__(self) -> None:
        self.done = False
        self._pending = b""  # the start of a line whose end has not arrived
        self._data: list[str] = []
        self._event = ""

    def feed(self, data: bytes, *, last: bool = False) -> Iterator[dict[str, Any]]:
        """Yield the events completed by `data` (`last`: the body ends after it); stop at `[DONE]`."""
        pending = self._pending + data
        if b"\r" in pending:
            # A CR at the very end may be the first half of a CR LF still on its way.
            held = b"\r" if pending.endswith(b"\r") and not last else b""
            pending = pending[: len(pending) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        *lines, self._pending = pending.split(b"\n")
        for raw in lines:
            if raw:
                field, _, value = raw.decode("utf-8", "replace").partition(":")
                if field == "data":
                    self._data.append(value.removeprefix(" "))
                elif field == "event":
                    self._event = value.removeprefix(" ")
                continue
            if not self._data:
                self._event = ""
                continue
            text = "\n".join(self._data)
            name = self._event
            self._data, self._event = [], ""
            if text.startswith(DONE):
                self.done = True
                return
            chunk = json.loads(text)
            if name == "error" or (isinstance(chunk, dict) and chunk.get("error")):
                error = chunk.get("error") if isinstance(chunk, dict) else None
                message = error.get("message") if isinstance(error, dict) else None
                raise StreamErrorEvent(message if isinstance(message, str) and message else "an error in the stream")
            if isinstance(chunk, dict):
                yield chunk

    def end(self) -> None:
        """The body ended: raise StreamCutShort unless `[DONE]` came (an unfinished event is dropped)."""
        if not self.done:
            raise StreamCutShort("the stream ended before [DONE]")
