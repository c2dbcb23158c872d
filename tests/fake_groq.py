"""A local fake of Groq's OpenAI-compatible chat-completions API, driven by the real groq SDK.

The server is stdlib only: a ThreadingHTTPServer on 127.0.0.1 in a daemon thread. Tests script
its answers with `FakeGroq.enqueue(...)` and the reply builders below; with nothing queued, a
deterministic default responder answers from the request body.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

CHAT_PATH = "/openai/v1/chat/completions"
FINGERPRINT = "fp_fake"
SUMMARY = {
    "title": "Fake summary",
    "text": "A short fake summary of the conversation.",
    "key_topics": ["testing"],
    "action_items": ["none"],
    "sentiment": "neutral",
}
ERROR_KINDS = {  # status -> (error type, error code), as Groq names them
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "unknown_url"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("tokens", "rate_limit_exceeded"),
    500: ("internal_server_error", "internal_server_error"),
    502: ("internal_server_error", "bad_gateway"),
    503: ("internal_server_error", "service_unavailable"),
}

Json = dict[str, Any]
Event = tuple[float, Json | str]  # seconds to wait, then the data of one SSE event
Delta = tuple[float, Json]  # seconds to wait, then one choice delta


class ClientGone(Exception):
    """A write failed because the client closed the connection."""


class Exchange:
    """One chat-completions request being answered: its body, its ids and the response writes."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: Json, number: int) -> None:
        self.handler = handler
        self.body = body
        self.number = number
        self.model = str(body.get("model") or "fake-model")
        self.completion_id = f"chatcmpl-{number}"
        self.request_id = f"req_{number}"
        self.created = int(time.time())

    def _write(self, data: bytes) -> None:
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except ConnectionError as error:
            raise ClientGone from error

    def _head(self, status: int, headers: dict[str, str]) -> None:
        try:
            self.handler.send_response(status)
            for name, value in headers.items():
                self.handler.send_header(name, value)
            self.handler.end_headers()
        except ConnectionError as error:
            raise ClientGone from error

    def send_json(self, status: int, payload: Json, headers: dict[str, str] | None = None) -> None:
        """Answer with a whole JSON body (content-length), then close."""
        data = json.dumps(payload).encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(data)), "Connection": "close"}
        self._head(status, head | (headers or {}))
        self._write(data)

    def open_stream(self) -> None:
        """Send the head of a chunked text/event-stream response."""
        self._head(
            200,
            {
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Transfer-Encoding": "chunked",
                "Connection": "close",
            },
        )

    def send_event(self, data: Json | str) -> None:
        """Send one SSE event `data: ...` as one HTTP chunk."""
        text = data if isinstance(data, str) else json.dumps(data)
        payload = f"data: {text}\n\n".encode()
        self._write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def end_stream(self, *, done: bool = True) -> None:
        """Send `data: [DONE]` (unless `done` is false) and the terminating zero-length chunk."""
        if done:
            self.send_event("[DONE]")
        self._write(b"0\r\n\r\n")

    def cut(self) -> None:
        """Drop the connection in the middle of the chunked body."""
        with contextlib.suppress(OSError):
            self.handler.connection.shutdown(socket.SHUT_RDWR)

    def chunk(self, delta: Json | None, *, finish: str | None = None, x_groq: Json | None = None) -> Json:
        """Return a chat.completion.chunk; `delta` None gives an empty `choices` list."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        chunk: Json = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if x_groq is not None:
            chunk["x_groq"] = x_groq
        return chunk


@dataclass(frozen=True)
class Reply:
    """A scripted response: `play` writes it through the exchange and returns the outcome."""

    name: str
    play: Callable[[Exchange], str]


def usage_json(usage: tuple[int, int]) -> Json:
    """Return Groq's usage object for (prompt_tokens, completion_tokens)."""
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "queue_time": 0.01,
        "prompt_time": 0.002,
        "completion_time": 0.05,
        "total_time": 0.052,
    }


def word_pieces(text: str) -> list[str]:
    """Split text into words that keep their leading spaces: "Hello world" -> ["Hello", " world"]."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    return [*pieces, tail] if tail else pieces


def content_deltas(text: str, delay: float = 0.0) -> list[Delta]:
    return [(delay, {"content": piece}) for piece in word_pieces(text)]


def chunk_events(
    exchange: Exchange,
    deltas: Iterable[Delta],
    *,
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
    empty_choices_chunk: bool = False,
) -> list[Event]:
    """Turn deltas into chunk events.

    The first delta gets role "assistant" and x_groq.id; when `finish` is given a closing chunk
    carries finish_reason and x_groq {id, usage}, or with `empty_choices_chunk` the usage goes
    into a final chunk whose choices is [] (and such a chunk also opens the stream).
    """
    steps = list(deltas)
    if finish is not None:
        steps.append((0.0, {}))
    events: list[Event] = []
    if empty_choices_chunk:
        events.append((0.0, exchange.chunk(None, x_groq={"id": exchange.request_id})))
    for position, (delay, delta) in enumerate(steps):
        closing = finish is not None and position == len(steps) - 1
        x_groq: Json | None = None
        if position == 0:
            delta = {"role": "assistant", **delta}
        if position == 0 or closing:
            x_groq = {"id": exchange.request_id}
        if closing and usage is not None and not empty_choices_chunk:
            x_groq = {"id": exchange.request_id, "usage": usage_json(usage)}
        events.append((delay, exchange.chunk(delta, finish=finish if closing else None, x_groq=x_groq)))
    if finish is not None and empty_choices_chunk:
        x_groq = {"id": exchange.request_id}
        if usage is not None:
            x_groq["usage"] = usage_json(usage)
        events.append((0.0, exchange.chunk(None, x_groq=x_groq)))
    return events


def streamed(
    name: str, events: Callable[[Exchange], Iterable[Event]], *, ending: str = "done", header_delay: float = 0.0
) -> Reply:
    """Build a streaming reply from an events factory.

    `ending`: "done" sends [DONE] and ends the body, "end" just ends the body, "cut" drops the
    connection without the final zero-length chunk. `header_delay`: seconds before the response
    headers go out (a server slow to answer at all).
    """
    if ending not in {"done", "end", "cut"}:
        raise ValueError(f"unknown ending {ending!r}")

    def play(exchange: Exchange) -> str:
        time.sleep(header_delay)
        exchange.open_stream()
        for delay, data in events(exchange):
            if delay > 0:
                time.sleep(delay)
            exchange.send_event(data)
        if ending == "cut":
            exchange.cut()
            return "cut"
        exchange.end_stream(done=ending == "done")
        return "completed"

    return Reply(name, play)


def text_reply(
    text: str,
    *,
    delay: float = 0.0,
    usage: tuple[int, int] = (12, 7),
    finish: str = "stop",
    empty_choices_chunk: bool = False,
    header_delay: float = 0.0,
) -> Reply:
    """Stream `text` word by word, `delay` seconds before each piece, usage in the last chunk."""
    return streamed(
        "text",
        lambda exchange: chunk_events(
            exchange,
            content_deltas(text, delay),
            finish=finish,
            usage=usage,
            empty_choices_chunk=empty_choices_chunk,
        ),
        header_delay=header_delay,
    )


def openai_reply(text: str, *, usage: tuple[int, int] | None = (12, 7), delay: float = 0.0) -> Reply:
    """Stream `text` as an OpenAI-compatible server does: no `x_groq`; the usage in a last chunk whose
    choices are empty (what `stream_options.include_usage` asks for), or none (`usage` None)."""

    def events(exchange: Exchange) -> list[Event]:
        pieces = word_pieces(text)
        out: list[Event] = [
            (delay, exchange.chunk({"role": "assistant", "content": piece} if n == 0 else {"content": piece}))
            for n, piece in enumerate(pieces)
        ]
        out.append((0.0, exchange.chunk({}, finish="stop")))
        if usage is not None:
            last = exchange.chunk(None)
            last["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            out.append((0.0, last))
        return out

    return streamed("openai_text", events)


def whole_call(index: int, call: tuple[str, str, dict[str, Any]]) -> Json:
    call_id, name, arguments = call
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def split_call(index: int, call: tuple[str, str, dict[str, Any]]) -> list[Json]:
    """Return the deltas of one call: its head with arguments "", then the arguments in 3+ pieces."""
    call_id, name, arguments = call
    head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    text = json.dumps(arguments)
    size = max(1, -(-len(text) // 3))
    pieces = [text[start : start + size] for start in range(0, len(text), size)]
    tails = [{"index": index, "function": {"arguments": piece}} for piece in pieces]
    return [{"tool_calls": [entry]} for entry in [head, *tails]]


def tool_calls_reply(
    calls: list[tuple[str, str, dict[str, Any]]],
    *,
    shape: str = "whole",
    text: str = "",
    usage: tuple[int, int] = (20, 9),
) -> Reply:
    """Stream tool calls (call_id, function name, arguments) in the given `shape`, after optional text.

    "whole": one complete call per delta; "one_delta": all calls in one delta; "split": a head
    delta per call, then its JSON arguments in 3+ argument-only deltas.
    """
    if shape == "whole":
        call_deltas = [{"tool_calls": [whole_call(index, call)]} for index, call in enumerate(calls)]
    elif shape == "one_delta":
        call_deltas = [{"tool_calls": [whole_call(index, call) for index, call in enumerate(calls)]}]
    elif shape == "split":
        call_deltas = [delta for index, call in enumerate(calls) for delta in split_call(index, call)]
    else:
        raise ValueError(f"unknown tool-call shape {shape!r}")
    deltas = content_deltas(text) + [(0.0, delta) for delta in call_deltas]
    return streamed(
        f"tool_calls:{shape}",
        lambda exchange: chunk_events(exchange, deltas, finish="tool_calls", usage=usage),
    )


def error_body(status: int, message: str) -> Json:
    kind, code = ERROR_KINDS.get(status, ("api_error", f"http_{status}"))
    return {"error": {"message": message, "type": kind, "code": code}}


def status_reply(status: int, *, message: str = "error", headers: dict[str, str] | None = None) -> Reply:
    """Answer with a plain HTTP error and Groq's JSON error body."""

    def play(exchange: Exchange) -> str:
        exchange.send_json(status, error_body(status, message), headers)
        return "status"

    return Reply(f"status:{status}", play)


def json_validate_failed_reply(failed_generation: str) -> Reply:
    """Answer as Groq does when the reply it generated is not the JSON asked for: 400 `json_validate_failed`."""

    def play(exchange: Exchange) -> str:
        error = {
            "message": "Failed to generate JSON. Please adjust your prompt. See 'failed_generation' for more details.",
            "type": "invalid_request_error",
            "code": "json_validate_failed",
            "failed_generation": failed_generation,
        }
        exchange.send_json(400, {"error": error})
        return "status"

    return Reply("json_validate_failed", play)


def cut_reply(text: str) -> Reply:
    """Stream the text, then drop the connection mid-body (the client sees an incomplete chunked read)."""
    return streamed("cut", lambda exchange: chunk_events(exchange, content_deltas(text)), ending="cut")


def error_event_reply(text: str, message: str = "upstream exploded") -> Reply:
    """Stream the text, then an SSE `error` object, then end the body properly."""

    def events(exchange: Exchange) -> list[Event]:
        error = {"error": {"message": message, "type": "internal_server_error"}}
        return [*chunk_events(exchange, content_deltas(text)), (0.0, error)]

    return streamed("error_event", events, ending="end")


def json_reply(content: str, *, usage: tuple[int, int] = (30, 15), delay: float = 0.0) -> Reply:
    """Answer a stream=false request with a whole chat.completion object, after `delay` seconds."""

    def play(exchange: Exchange) -> str:
        time.sleep(delay)
        exchange.send_json(
            200,
            {
                "id": exchange.completion_id,
                "object": "chat.completion",
                "created": exchange.created,
                "model": exchange.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage_json(usage),
                "x_groq": {"id": exchange.request_id, "usage": usage_json(usage)},
            },
        )
        return "completed"

    return Reply("json", play)


def message_text(message: Json) -> str:
    """Return a message's content as text (string content, or the text parts of a list)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def default_reply(exchange: Exchange) -> Reply:
    """Choose the deterministic answer to a request when nothing is queued."""
    body = exchange.body
    messages = [message for message in body.get("messages") or [] if isinstance(message, dict)]
    if not body.get("stream"):
        if body.get("response_format") == {"type": "json_object"}:
            return json_reply(json.dumps(SUMMARY))
        return json_reply("ok")
    if messages and messages[-1].get("role") == "tool":
        return text_reply("The tool said: " + message_text(messages[-1]))
    user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    tools = {(tool.get("function") or {}).get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)}
    if "time" in user.lower() and "current_time" in tools:
        return tool_calls_reply([(f"call_{exchange.number}", "current_time", {"timezone": "UTC"})])
    if "slow" in user.lower():
        return text_reply(" ".join(f"word{n}" for n in range(200)), delay=0.05)
    return text_reply("You said: " + user, delay=0.01)


class FakeGroq:
    """The fake Groq server: records every POST and answers from its queue or the default responder.

    `outcomes[i]` is None while request i runs, then "completed", "client_closed", "cut" or
    "status" (or "error" if a reply itself crashed).
    """

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Json] = []
        self.headers: list[dict[str, str]] = []
        self.outcomes: list[str | None] = []
        self._queue: deque[Reply] = deque()
        self._changed = threading.Condition()
        self._generation = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeGroq:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-groq", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (running replies die with their daemon threads)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def reset(self) -> None:
        """Forget the queue and every recorded request; replies still running no longer report."""
        with self._changed:
            self._generation += 1
            self._queue.clear()
            self.requests.clear()
            self.headers.clear()
            self.outcomes.clear()
            self._changed.notify_all()

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies; each next chat-completions POST takes the first one."""
        with self._changed:
            self._queue.extend(replies)

    def wait_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` requests arrived; return whether they did."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_outcome(self, index: int, timeout: float = 5.0) -> str | None:
        """Block until request `index` has an outcome (or timeout) and return it."""
        with self._changed:
            self._changed.wait_for(lambda: index < len(self.outcomes) and self.outcomes[index] is not None, timeout)
            return self.outcomes[index] if index < len(self.outcomes) else None

    def _admit(self, body: Json, headers: dict[str, str], *, take: bool) -> tuple[int, int, Reply | None]:
        """Record a request; return its index, the generation and (if `take`) the next queued reply."""
        with self._changed:
            self.requests.append(body)
            self.headers.append(headers)
            self.outcomes.append(None)
            reply = self._queue.popleft() if take and self._queue else None
            self._changed.notify_all()
            return len(self.requests) - 1, self._generation, reply

    def _settle(self, index: int, generation: int, outcome: str) -> None:
        with self._changed:
            if generation == self._generation:
                self.outcomes[index] = outcome
                self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGroq

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Silence the per-request log lines."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.close_connection = True
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        valid = isinstance(body, dict)
        on_chat = urlsplit(self.path).path == CHAT_PATH
        headers = {name.lower(): value for name, value in self.headers.items()}
        index, generation, reply = fake._admit(body if valid else {}, headers, take=on_chat and valid)
        exchange = Exchange(self, body if valid else {}, index + 1)
        if not on_chat:
            reply = status_reply(404, message=f"Unknown request URL: POST {self.path}")
        elif not valid:
            reply = status_reply(400, message="The request body is not a JSON object")
        elif reply is None:
            reply = default_reply(exchange)
        try:
            outcome = reply.play(exchange)
        except ClientGone:
            outcome = "client_closed"
        except Exception:
            fake._settle(index, generation, "error")
            raise
        fake._settle(index, generation, outcome)

    def not_found(self) -> None:
        self.close_connection = True
        data = json.dumps(error_body(404, f"Unknown request URL: {self.command} {self.path}")).encode()
        with contextlib.suppress(ConnectionError):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_DELETE = not_found  # noqa: N815 (http.server's naming)
