"""One chat turn: record the user's message, stream the reply through tool rounds, record it.

The consumer starts a `Turn` (its own task, detached from the socket: see
`chat.streams`) and it is cancelled with a reason, `turn.cancel(STOP)` or
`turn.cancel(CLIENT_GONE)` when nobody followed it for a while; the reason is
kept on the Turn, since a cancel landing in a database call loses the
CancelledError's message. The reply produced so far is recorded either way,
and the turn always ends with one `done` frame.
"""

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings

from audit import metrics, selectors
from audit import services as audit_services
from audit.costs import Charge, Spend, cost_usd
from audit.models import EventType

from . import tracing
from .context import last_turn_used_tools, messages_build, text_tokens_estimate, tokens_estimate, window_cut
from .database import database_async
from .limits import token_budget_charge
from .llm import LLMError, TextDelta, ToolCall, Usage, chat_model_get
from .llm.types import ChatModel, Fallback, Finish
from .memory import earlier_extend
from .retry import database_retry
from .strategy import strategy_choose
from .tools import ToolContext, tool_run, tools_enabled
from .tools.registry import ToolOutcome, arguments_parse, tool_get

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]

STOP = "stop"
# The purpose of a turn's model call that extended the rolling summary of a cut history.
HISTORY_SUMMARY = "history_summary"
CLIENT_GONE = "client_gone"

# A finish_reason that cut the reply short: the error frame (code, message) that says so.
CUT_SHORT = {
    "length": ("llm_length", "The reply reached the length limit and was cut off."),
    "content_filter": ("llm_content_filter", "The reply was stopped by the model's content filter."),
}

event_record = database_async(audit_services.event_record)
turn_release = database_async(audit_services.turn_release)
session_events = database_async(selectors.session_events)
session_turn_state = database_async(selectors.session_turn_state)
context_summary_save = database_async(audit_services.context_summary_save)


async def _event_record_whole(*, on_recorded: Callable[[], None] | None = None, **kwargs: Any) -> None:
    """Record an event; a cancel landing meanwhile waits for the write to end before it goes on.

    The write runs in a database thread, which a cancel does not stop: the
    turn's later writes (its reply) must not overtake it, or the events would
    be out of order. The cancel is raised again once the write has ended.
    `on_recorded` is called when the write succeeded, cancelled or not.
    """
    write = asyncio.ensure_future(event_record(**kwargs))
    if on_recorded is not None:
        write.add_done_callback(lambda done: done.cancelled() or done.exception() or on_recorded())
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])
        raise


@dataclass
class Reply:
    """What the turn has produced so far."""

    turn_id: str = ""
    # Whether the user's message is in the record; a turn whose message is not
    # (the database was away) records nothing else either.
    user_recorded: bool = False
    # Whether the assistant's reply is in the record; when it is not, releasing the
    # turn records an empty one in its place, so the user message is never left unanswered.
    recorded: bool = False
    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    ttft_ms: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    finish_reason: str | None = None
    request_ids: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    tools_offered: list[str] = field(default_factory=list)
    ignored_tool_calls: list[str] = field(default_factory=list)
    # The spare model answered: {"model", "replaced", "reason"} (see chat.llm.fallback).
    fallback: dict[str, str] | None = None
    # Each model call's tokens, by the model that answered it (for the cost). A
    # round that produced output but whose usage never came (a stop, a stream
    # cut short) is estimated, so that what it used is still charged.
    spend: Spend = field(default_factory=Spend)
    # The model answering now (set when the turn starts; the spare's after a fallback).
    answered_model: str = ""

    def add_text(self, text: str) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()
        self.parts.append(text)

    def add_usage(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        for name, value in usage.timings.items():
            self.timings[name] = round(self.timings.get(name, 0.0) + value, 6)

    def estimate_round(self, *, messages: list[dict[str, Any]], text: str, calls: list[ToolCall]) -> Usage:
        """Estimate the tokens of a round whose usage never came; a round that produced nothing used none."""
        if not text and not calls:
            return Usage()
        produced = text + "".join(call.name + call.arguments for call in calls)
        return Usage(prompt_tokens=tokens_estimate(messages), completion_tokens=text_tokens_estimate(produced))

    def charge(self, *, model: str, usage: Usage, estimated: bool, purpose: str = "") -> Charge:
        """Note a model call's tokens against the model that used them (rounds may differ: a fallback).

        The turn's calls are its rounds and, when the history was cut, the
        fast model's call that extended the rolling summary (chat.memory,
        `purpose` HISTORY_SUMMARY: in the cost, not in `usage_estimated`).
        """
        return self.spend.add(
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=estimated,
            purpose=purpose,
        )

    def cost(self) -> dict[str, Any]:
        """Return the reply's cost in USD (each call at its model's LLM_PRICES), and its estimated tokens.

        `cost_usd` is None when no model used has a price; models without one
        are listed under `unpriced_models` (their tokens are not in the cost).
        """
        total = self.spend.cost()
        if total is None and not self.spend.charges:
            # Nothing used: free, if the model answering has a price at all.
            total = cost_usd(model=self.answered_model, prompt_tokens=0, completion_tokens=0)
        figures: dict[str, Any] = {"cost_usd": float(total) if total is not None else None}
        _, unpriced = self.spend.cost_by_model()
        if unpriced:
            figures["unpriced_models"] = unpriced
        estimated_prompt, estimated_completion = self.spend.estimated()
        if estimated_prompt or estimated_completion:
            figures["usage_estimated"] = {"prompt_tokens": estimated_prompt, "completion_tokens": estimated_completion}
        return figures

    def answered_by(self, model: ChatModel) -> str:
        """Return the model that answered: the spare after a fallback, else the one routing chose."""
        if self.fallback is not None:
            return self.fallback["model"]
        return self.strategy.get("model", model.model)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def _tool_call_frame(call: ToolCall) -> dict[str, Any]:
    arguments = arguments_parse(call.arguments)
    return {
        "type": "tool_call",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": arguments if arguments is not None else {"_raw": call.arguments},
    }


def _tool_result_frame(call: ToolCall, outcome: ToolOutcome) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "call_id": call.call_id,
        "name": call.name,
        "ok": outcome.ok,
        "result": outcome.result,
    }


async def _tool_run_traced(call: ToolCall, context: ToolContext) -> ToolOutcome:
    """Run one tool call inside its `execute_tool` span."""
    with tracing.tool_span(
        name=call.name, call_id=call.call_id, session_id=context.session_id, arguments=call.arguments
    ) as span:
        outcome = await tool_run(name=call.name, arguments=call.arguments, context=context)
        tracing.tool_end(span, ok=outcome.ok, result=outcome.result)
    return outcome


async def _tools_round(
    *,
    context: ToolContext,
    calls: list[ToolCall],
    round_text: str,
    messages: list[dict[str, Any]],
    emit: Emit,
) -> None:
    """Announce and record the round's calls, run them concurrently, send and record the results in call order."""
    messages.append(
        {
            "role": "assistant",
            "content": round_text or None,
            "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ],
        }
    )
    for call in calls:
        frame = _tool_call_frame(call)
        await emit(frame)
        await _event_record_whole(
            session_id=context.session_id,
            type=EventType.TOOL_CALL,
            content=call.name,
            data={"call_id": call.call_id, "name": call.name, "arguments": frame["arguments"]},
        )
    outcomes = await asyncio.gather(*(_tool_run_traced(call, context) for call in calls))
    for call, outcome in zip(calls, outcomes, strict=True):
        # A name the model made up is counted as "unknown", so the metric's labels stay few.
        metrics.tool_called(tool=call.name if tool_get(call.name) else "unknown", ok=outcome.ok)
        await emit(_tool_result_frame(call, outcome))
        await _event_record_whole(
            session_id=context.session_id,
            type=EventType.TOOL_RESULT,
            content=call.name,
            data={
                "call_id": call.call_id,
                "name": call.name,
                "ok": outcome.ok,
                "result": outcome.result,
                "duration_ms": outcome.duration_ms,
            },
        )
        messages.append({"role": "tool", "tool_call_id": call.call_id, "content": outcome.for_model()})


def _budget(model_name: str) -> int:
    return settings.CHAT_CONTEXT_BUDGETS.get(model_name, settings.CHAT_CONTEXT_BUDGET_TOKENS)


async def _converse(*, session_id: UUID, content: str, model: ChatModel, reply: Reply, emit: Emit) -> None:
    """Stream model rounds until the model answers in text (or the round cap forces it to)."""
    state = await session_turn_state(session_id=session_id)
    context = ToolContext(session_id=session_id, user_id=state.user_id, anon_key=state.anon_key)
    # Only the events the rolling summary does not cover yet are read.
    events = await session_events(session_id=session_id, after_seq=state.context_summary_seq, superseded=False)
    earlier = state.context_summary
    uncut = messages_build(events=events, system_prompt=settings.CHAT_SYSTEM_PROMPT, earlier=earlier)
    strategy = strategy_choose(
        content=content,
        history_tokens=tokens_estimate(uncut),
        budget_tokens=_budget(model.model),
        last_turn_used_tools=last_turn_used_tools(events),
        main_model=model.model,
        fast_model=model.fast_model,
        system_prompt=settings.CHAT_SYSTEM_PROMPT,
    )
    reply.strategy = strategy.record()
    # The history is fitted to the budget of the model the strategy chose.
    budget = _budget(strategy.model)
    dropped, events = window_cut(events=events, system_prompt=strategy.system_prompt, earlier=earlier, budget=budget)
    if dropped:
        earlier, spent = await earlier_extend(model=model, earlier=earlier, dropped=dropped)
        if spent is not None:
            spent_by, spent_usage, estimated = spent
            charge = reply.charge(model=spent_by, usage=spent_usage, estimated=estimated, purpose=HISTORY_SUMMARY)
            price = cost_usd(model=spent_by, prompt_tokens=charge.prompt, completion_tokens=charge.completion)
            # Charged to this reply, but not in its `usage` (the reply's own rounds). Noted now: a
            # stop landing in the save below still records it with the cost it is part of.
            reply.context["summary_usage"] = {
                "model": spent_by,
                "prompt_tokens": charge.prompt,
                "completion_tokens": charge.completion,
                "estimated": estimated,
                "cost_usd": float(price) if price is not None else None,
            }
        await context_summary_save(session_id=session_id, text=earlier, through_seq=dropped[-1].seq)
    messages = messages_build(events=events, system_prompt=strategy.system_prompt, earlier=earlier)
    reply.context |= {
        "budget_tokens": budget,
        "history_tokens": tokens_estimate(messages),
        "dropped_events": len(dropped),
        "summary_through_seq": dropped[-1].seq if dropped else state.context_summary_seq,
    }
    offered_tools = tools_enabled() if strategy.tools else []
    reply.tools_offered = [entry.name for entry in offered_tools]
    schemas = [entry.schema() for entry in offered_tools]
    max_rounds = settings.CHAT_MAX_TOOL_ROUNDS
    for round_number in range(max_rounds + 1):
        # The last round, or one whose tool results filled the budget, offers no
        # tools, which forces an answer in text.
        room = tokens_estimate(messages) <= budget
        offered = schemas if round_number < max_rounds and room else []
        reply.rounds += 1
        calls: list[ToolCall] = []
        round_parts: list[str] = []
        with tracing.model_call_span(
            mode=model.mode,
            model=strategy.model,
            session_id=session_id,
            messages=messages,
            temperature=strategy.temperature,
        ) as span:
            # aclosing: a stop or a cancel closes the model's stream (its HTTP response) at once.
            stream = aclosing(
                model.stream(
                    messages=messages,
                    tools=offered,
                    model=strategy.model,
                    temperature=strategy.temperature,
                    max_tokens=strategy.max_tokens,
                )
            )
            round_usage: Usage | None = None
            try:
                async with stream as items:
                    async for item in items:
                        if isinstance(item, TextDelta):
                            reply.add_text(item.text)
                            round_parts.append(item.text)
                            await emit({"type": "token", "content": item.text})
                        elif isinstance(item, ToolCall):
                            calls.append(item)
                        elif isinstance(item, Usage):
                            round_usage = item
                            reply.add_usage(item)
                        elif isinstance(item, Finish):
                            reply.finish_reason = item.reason
                            if item.request_id:
                                reply.request_ids.append(item.request_id)
                        elif isinstance(item, Fallback):
                            reply.fallback = {"model": item.model, "replaced": item.replaced, "reason": item.reason}
                            await emit({"type": "model_fallback", **reply.fallback})
            finally:
                reply.answered_model = reply.answered_by(model)
                if round_usage is None:
                    estimate = reply.estimate_round(messages=messages, text="".join(round_parts), calls=calls)
                    reply.charge(model=reply.answered_model, usage=estimate, estimated=True)
                else:
                    reply.charge(model=reply.answered_model, usage=round_usage, estimated=False)
            tracing.model_call_end(
                span,
                finish_reason=reply.finish_reason,
                input_tokens=round_usage.prompt_tokens if round_usage else None,
                output_tokens=round_usage.completion_tokens if round_usage else None,
                text="".join(round_parts),
                calls=calls,
                answered_by=reply.answered_by(model),
            )
        if not calls:
            return
        if not offered:
            # Tool calls where no tools were offered are not run.
            reply.ignored_tool_calls = [call.name for call in calls]
            if not round_parts:
                raise LLMError("llm_no_answer", "The model kept asking for tools instead of answering; try rephrasing.")
            return
        await _tools_round(context=context, calls=calls, round_text="".join(round_parts), messages=messages, emit=emit)


async def _reply_record(*, session_id: UUID, model: ChatModel, reply: Reply, outcome: dict[str, Any]) -> None:
    """Record the assistant's reply once for the turn, with its figures and how it ended.

    Retried while the database is away; a retry does not record it twice.
    """
    answered_by = reply.answered_by(model)
    await database_retry(
        event_record,
        what="record the reply",
        session_id=session_id,
        retry_kwargs={"retrying": True},
        type=EventType.ASSISTANT_MESSAGE,
        content="".join(reply.parts),
        data={
            "turn_id": reply.turn_id,
            "model": answered_by,
            "llm_mode": model.mode,
            "strategy": reply.strategy,
            "context": reply.context,
            "usage": reply.usage(),
            "ttft_ms": reply.ttft_ms,
            "duration_ms": reply.elapsed_ms(),
            "rounds": reply.rounds,
            "finish_reason": reply.finish_reason,
            "request_ids": reply.request_ids,
            "timings": reply.timings,
            "tools_offered": reply.tools_offered,
            "ignored_tool_calls": reply.ignored_tool_calls,
            **({"fallback": reply.fallback} if reply.fallback else {}),
            **reply.cost(),
            **outcome,
        },
    )


class Turn:
    """A running turn: its task, and cancellation that is refused once the turn is finishing."""

    def __init__(
        self,
        *,
        session_id: UUID,
        lease_id: UUID,
        visitor: str,
        content: str,
        emit: Emit,
        frame_seq_next: Callable[[], int] | None = None,
        resend: str = "",
    ) -> None:
        self.lease_id = lease_id
        self.started = False
        self.finishing = False
        # Set once the turn is released, just before `done` is sent.
        self.answered = False
        # Why the turn was cancelled. Kept here, not in the CancelledError:
        # asgiref replaces that error (and its message) when the cancel lands
        # during a database call.
        self.cancel_reason: str | None = None
        self.task = asyncio.create_task(
            turn_run(
                session_id=session_id,
                lease_id=lease_id,
                visitor=visitor,
                content=content,
                emit=emit,
                turn=self,
                frame_seq_next=frame_seq_next,
                resend=resend,
            )
        )

    def running(self) -> bool:
        """Whether the turn still holds the session (it lets go just before `done`)."""
        return not (self.answered or self.task.done())

    def cancel(self, reason: str) -> bool:
        """Cancel the reply with a reason (STOP or CLIENT_GONE); return whether it was cancelled."""
        if self.finishing or self.task.done():
            return False
        if self.cancel_reason is not None:
            # Cancelled already: a second cancel would cut short the waits of its cleanup.
            return True
        self.cancel_reason = reason
        if self.started:
            self.task.cancel(reason)
        # Otherwise turn_run sees cancel_reason at its first step.
        return True

    async def wait(self) -> None:
        """Wait for the turn to end; the caller's own cancellation still propagates."""
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.done():
                raise


async def turn_run(
    *,
    session_id: UUID,
    lease_id: UUID,
    content: str,
    emit: Emit,
    visitor: str = "",
    turn: Turn | None = None,
    frame_seq_next: Callable[[], int] | None = None,
    resend: str = "",
) -> None:
    """Run one user turn to its end, sending frames through `emit`; charge its tokens to the visitor.

    `frame_seq_next`: the number the next frame sent gets; the turn's release
    records that of its `done` as the session's last frame_seq. `resend`
    ("regenerate" or "edit"): the message replaces the last one, whose turn
    is marked superseded as this one's message is recorded.
    """
    if turn is not None:
        turn.started = True
    metrics.turn_started()
    reply = Reply(turn_id=uuid.uuid4().hex)
    model = chat_model_get()
    reply.answered_model = model.model
    outcome: dict[str, Any] = {"stopped": False, "stop_reason": None}
    error: LLMError | None = None
    try:
        await _event_record_whole(
            on_recorded=functools.partial(setattr, reply, "user_recorded", True),
            session_id=session_id,
            type=EventType.USER_MESSAGE,
            content=content,
            data={"turn_id": reply.turn_id, "resend": resend} if resend else {"turn_id": reply.turn_id},
            supersede=bool(resend),
        )
        if turn is not None and turn.cancel_reason:
            raise asyncio.CancelledError(turn.cancel_reason)
        await _converse(session_id=session_id, content=content, model=model, reply=reply, emit=emit)
        if reply.finish_reason in CUT_SHORT:
            # Not an exception: the reply is whole as far as the model goes, but cut short.
            error = LLMError(*CUT_SHORT[reply.finish_reason])
            outcome["error_code"] = error.code
    except asyncio.CancelledError:
        reason = (turn.cancel_reason if turn is not None else None) or CLIENT_GONE
        outcome = {"stopped": True, "stop_reason": reason}
    except LLMError as exc:
        error = exc
        outcome["error_code"] = exc.code
    except Exception:
        logger.exception("turn failed in session %s", session_id)
        error = LLMError("internal", "Something went wrong while answering; try again.")
        outcome["error_code"] = "internal"
    if turn is not None:
        turn.finishing = True
    try:
        await _turn_finish(session_id=session_id, model=model, reply=reply, outcome=outcome, error=error, emit=emit)
    finally:
        try:
            await database_retry(
                turn_release,
                what="release the turn",
                session_id=session_id,
                lease_id=lease_id,
                reply_missing=reply.user_recorded and not reply.recorded,
                frame_seq=frame_seq_next() if frame_seq_next is not None else None,
            )
        except Exception:
            # The claim stays with this socket, which may claim again; another
            # socket gets it once this one's lease runs out.
            logger.exception("could not release the turn of session %s", session_id)
    # `done` goes out only once the turn is released and recorded, so a
    # client may send its next message the moment it reads `done`.
    if turn is not None:
        turn.answered = True
    answered_by = reply.answered_by(model)
    metrics.turn_finished(
        outcome="stopped" if outcome["stopped"] else "error" if "error_code" in outcome else "done",
        model=answered_by,
        first_token_seconds_=reply.ttft_ms / 1000 if reply.ttft_ms is not None else None,
        seconds=reply.elapsed_ms() / 1000,
        tokens_by_model=reply.spend.counted_by_model(),
        cost_by_model=reply.spend.cost_by_model()[0],
    )
    await emit(
        {
            "type": "done",
            "stopped": outcome["stopped"],
            "usage": reply.usage(),
            "ttft_ms": reply.ttft_ms,
            "duration_ms": reply.elapsed_ms(),
            "model": answered_by,
            "turn_id": reply.turn_id,
        }
    )
    if visitor:
        try:
            # What the models reported, and what was estimated where they reported nothing (a stop).
            await token_budget_charge(visitor=visitor, tokens=sum(reply.spend.tokens()))
        except Exception:
            logger.exception("could not charge the tokens of session %s", session_id)


async def _turn_finish(
    *,
    session_id: UUID,
    model: ChatModel,
    reply: Reply,
    outcome: dict[str, Any],
    error: LLMError | None,
    emit: Emit,
) -> None:
    """Send the error frame and record the reply (and the error)."""
    if error is not None:
        metrics.error_sent(error.code)
        frame: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
        if error.retry_after is not None:
            frame["retry_after"] = error.retry_after
        await emit(frame)
    if not reply.user_recorded:
        return
    try:
        await _reply_record(session_id=session_id, model=model, reply=reply, outcome=outcome)
        reply.recorded = True
        if error is not None:
            await database_retry(
                event_record,
                what="record the error",
                session_id=session_id,
                retry_kwargs={"retrying": True},
                type=EventType.ERROR,
                content=error.message,
                data={"code": error.code, "retry_after": error.retry_after, "turn_id": reply.turn_id},
            )
    except Exception:
        logger.exception(
            "could not record the reply of session %s (turn %s, %d characters lost)",
            session_id,
            reply.turn_id,
            sum(len(part) for part in reply.parts),
        )
        if error is None:
            metrics.error_sent("internal")
            await emit({"type": "error", "code": "internal", "message": "The reply could not be saved."})
