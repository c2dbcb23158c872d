"""What the consumer asks of the chat: join and leave a session, claim a turn."""

from datetime import timedelta
from typing import Any
from uuid import UUID

from audit import selectors, services
from audit.services import SessionForbidden

from .llm import chat_model_get

__all__ = ["SessionForbidden", "session_join", "session_leave", "session_touch", "turn_claim", "turn_release"]

# A turn that has held its claim this long died with its process.
TURN_STALE_AFTER = timedelta(minutes=10)


def session_join(*, session_id: UUID, user_id: int | None, anon_key: str) -> dict[str, Any]:
    """Open or resume the session for its owner; return the `session` frame.

    Raise SessionForbidden when someone else owns it.
    """
    model = chat_model_get()
    opened = services.session_open(
        session_id=session_id, user_id=user_id, anon_key=anon_key, model=model.model, llm_mode=model.mode
    )
    return {
        "type": "session",
        "session_id": str(session_id),
        "resumed": opened.resumed,
        "history": selectors.session_history(session_id=session_id) if opened.resumed else [],
        "model": model.model,
        "llm_mode": model.mode,
    }


def session_leave(*, session_id: UUID) -> None:
    """Count the socket gone; the last one out ends the session and queues its summary."""
    services.session_leave(session_id=session_id)


def session_touch(*, session_id: UUID) -> None:
    """Keep an idle but connected session from being ended by the idle sweep."""
    services.session_touch(session_id=session_id)


def turn_claim(*, session_id: UUID) -> bool:
    """Claim the session's single turn slot; False when a turn is already running."""
    return services.turn_claim(session_id=session_id, stale_after=TURN_STALE_AFTER)


def turn_release(*, session_id: UUID) -> None:
    """Free the session's turn slot."""
    services.turn_release(session_id=session_id)
