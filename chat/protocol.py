"""Decode and check client frames; bad input becomes a `FrameError` with its error code."""

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

FrameKind = Literal["message", "edit", "regenerate", "stop", "ping", "feedback"]

FEEDBACK_RATINGS = ("up", "down")
FEEDBACK_MAX_CHARS = 2000
TURN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ClientFrame:
    """A valid frame from the client; a `feedback` frame's reply is named by `turn_id`."""

    kind: FrameKind
    content: str = ""
    turn_id: str = ""
    rating: str = ""


class FrameError(Exception):
    """A frame the server refuses; `code` is the error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def frame_parse(*, text: str | None, binary: bytes | None, max_chars: int) -> ClientFrame:
    """Return the client frame, or raise FrameError saying what is wrong with it."""
    if text is None:
        raise FrameError("invalid_message", "Binary frames are not supported; send JSON text frames.")
    # A JSON string escapes a character in at most 6 characters (\\uXXXX):
    # anything longer than that cannot hold an allowed message.
    if len(text) > max_chars * 6 + 1024:
        raise FrameError("message_too_large", f"Messages are limited to {max_chars} characters.")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser goes ("[[[[..."), an attack, not JSON to serve.
        raise FrameError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise FrameError("invalid_message", "A frame must be a JSON object with a 'type'.")
    kind = payload.get("type")
    if kind is None and "message" in payload:
        # The shape older clients send: {"message": "..."}.
        kind, content = "message", payload["message"]
    else:
        content = payload.get("content")
    if kind in ("stop", "ping", "regenerate"):
        return ClientFrame(kind=kind)
    if kind == "feedback":
        return _feedback_parse(payload)
    if kind not in ("message", "edit"):
        raise FrameError(
            "invalid_message",
            "Unknown frame type; expected 'message', 'edit', 'regenerate', 'feedback', 'stop' or 'ping'.",
        )
    if not isinstance(content, str) or not content.strip():
        raise FrameError("invalid_message", "A message needs a non-empty string 'content'.")
    if len(content) > max_chars:
        raise FrameError("message_too_large", f"Messages are limited to {max_chars} characters.")
    text_check(content)
    return ClientFrame(kind=kind, content=content)


def _feedback_parse(payload: dict[str, Any]) -> ClientFrame:
    """Check a `{"type": "feedback", "turn_id", "rating": "up"|"down", "comment"?}` frame."""
    turn_id, rating, comment = payload.get("turn_id"), payload.get("rating"), payload.get("comment", "")
    if not isinstance(turn_id, str) or not TURN_ID.fullmatch(turn_id):
        raise FrameError("invalid_message", "Feedback needs the 'turn_id' of a reply (from its 'done' frame).")
    if rating not in FEEDBACK_RATINGS:
        raise FrameError("invalid_message", "Feedback needs a 'rating' of 'up' or 'down'.")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise FrameError("invalid_message", "A feedback 'comment' must be a string.")
    if len(comment) > FEEDBACK_MAX_CHARS:
        raise FrameError("message_too_large", f"Feedback comments are limited to {FEEDBACK_MAX_CHARS} characters.")
    text_check(comment)
    return ClientFrame(kind="feedback", content=comment.strip(), turn_id=turn_id, rating=rating)


def text_check(text: str) -> None:
    """Raise FrameError when the text holds a character that cannot be stored.

    JSON escapes can carry both: PostgreSQL refuses NUL in text columns, and
    a lone surrogate (half of a UTF-16 pair) cannot be encoded as UTF-8 for
    any database or for the model. A paired surrogate escape ("\\ud83d\\ude00")
    is already one character after decoding, so only broken text is refused.
    """
    if "\x00" in text:
        raise FrameError("invalid_message", "Messages cannot contain the NUL character (\\u0000).")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError(
            "invalid_message", "Messages cannot contain unpaired UTF-16 surrogates (\\ud800 to \\udfff)."
        ) from None
