"""A session's events as the admin's timeline: paginated, each reply with its figures in words."""

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.core.paginator import Page, Paginator

from .models import FEEDBACK, Event, EventType

TIMELINE_PAGE_SIZE = 100


@dataclass(frozen=True)
class TimelineRow:
    """One event, ready to show."""

    seq: int
    created_at: Any
    kind: str
    label: str
    content: str
    figures: str
    strategy_name: str
    strategy_detail: str
    data: str
    # Replaced by a later turn (regenerate or edit): shown, marked.
    superseded: bool = False
    # A user message that replaced an earlier one: "regenerate" or "edit".
    resend: str = ""


def reply_figures(data: dict[str, Any]) -> str:
    """Say in a line what a reply cost and how it ended."""
    usage = data.get("usage") or {}
    parts = [data.get("model") or "", f"first token {data['ttft_ms']} ms" if data.get("ttft_ms") is not None else ""]
    if data.get("duration_ms") is not None:
        parts.append(f"{data['duration_ms'] / 1000:.1f} s")
    if usage:
        parts.append(f"{usage.get('prompt_tokens', 0)} + {usage.get('completion_tokens', 0)} tokens")
    if estimated := data.get("usage_estimated"):
        parts.append(f"~{estimated.get('prompt_tokens', 0)} + {estimated.get('completion_tokens', 0)} estimated")
    if side := (data.get("context") or {}).get("summary_usage"):
        # The history was cut and summarized first (chat.memory); the reply was charged for it.
        tokens = f"{side.get('prompt_tokens', 0)} + {side.get('completion_tokens', 0)}"
        parts.append(f"{'~' if side.get('estimated') else ''}{tokens} to summarize the history ({side.get('model')})")
    if data.get("cost_usd") is not None:
        parts.append(f"${data['cost_usd']:.6f}")
    if data.get("rounds", 1) > 1:
        parts.append(f"{data['rounds']} rounds")
    if data.get("stopped"):
        parts.append(f"stopped ({data.get('stop_reason')})")
    elif data.get("error_code"):
        parts.append(f"failed: {data['error_code']}")
    elif data.get("finish_reason"):
        parts.append(f"finished: {data['finish_reason']}")
    return " · ".join(part for part in parts if part)


def _row(event: Event) -> TimelineRow:
    data = event.data or {}
    content, figures, strategy_name, strategy_detail = event.content, "", "", ""
    if event.type == EventType.ASSISTANT_MESSAGE:
        figures = reply_figures(data)
        if chosen := data.get("strategy"):
            strategy_name = chosen.get("name", "")
            strategy_detail = f"on {chosen.get('model')}: {chosen.get('reason')}"
    elif event.type == EventType.TOOL_CALL:
        content = f"{data.get('name')}({json.dumps(data.get('arguments'), ensure_ascii=False)})"
    elif event.type == EventType.TOOL_RESULT:
        outcome = "ok" if data.get("ok") else "failed"
        result = json.dumps(data.get("result"), indent=2, ensure_ascii=False)
        content = f"{data.get('name')} → {outcome} in {data.get('duration_ms')} ms\n{result}"
    elif event.type == EventType.ERROR:
        content = f"{data.get('code')}: {event.content}"
    elif event.type == EventType.SYSTEM and data.get("kind") == FEEDBACK:
        rated = "rated up" if data.get("rating") == "up" else "rated down"
        content = f"{rated} the reply #{data.get('reply_seq')}" + (f": {event.content}" if event.content else "")
    return TimelineRow(
        seq=event.seq,
        created_at=event.created_at,
        kind=event.type,
        label=EventType(event.type).label,
        content=content,
        figures=figures,
        strategy_name=strategy_name,
        strategy_detail=strategy_detail,
        data=json.dumps(data, indent=2, ensure_ascii=False) if data else "",
        superseded=event.superseded,
        resend=data.get("resend", "") if event.type == EventType.USER_MESSAGE else "",
    )


def timeline_page(*, session_id: UUID, number: Any) -> Page:
    """Return one page of the session's events, in order, as timeline rows."""
    events = Event.objects.filter(session_id=session_id).order_by("seq")
    page = Paginator(events, TIMELINE_PAGE_SIZE).get_page(number)
    rows: Any = [_row(event) for event in page.object_list]
    page.object_list = rows
    return page
