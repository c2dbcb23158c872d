"""The operators' figures, in Prometheus' format at `/metrics`.

Each process counts what it does: the web processes their sockets, turns,
tokens, tool calls and error frames; the Celery worker its summary tasks.
With `PROMETHEUS_MULTIPROC_DIR` set (a directory every process of the host
can write, empty when they start), prometheus-client keeps the figures in
files there and `/metrics` adds up all the processes, the worker's included;
without it (the embedded default: one process, tasks in process) each
process serves only its own.

The recording functions never raise: a figure that cannot be counted must
not cost a reply.
"""

import hmac
import logging
import os
from decimal import Decimal

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

logger = logging.getLogger(__name__)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Seconds; a first token within 100 ms to a reply of a few minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

sockets_open = Gauge("llmbacker_sockets_open", "Chat sockets open now.", multiprocess_mode="livesum")
turns_started = Counter("llmbacker_turns_started_total", "Turns started (a user message accepted).")
turns_finished = Counter(
    "llmbacker_turns_finished_total", "Turns ended, by outcome: done, stopped or error.", ["outcome"]
)
first_token_seconds = Histogram(
    "llmbacker_turn_first_token_seconds",
    "Time from the message to the reply's first token.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
turn_seconds = Histogram(
    "llmbacker_turn_duration_seconds", "Time from the message to the turn's end.", ["model"], buckets=LATENCY_BUCKETS
)
llm_tokens = Counter(
    "llmbacker_llm_tokens_total",
    "Model tokens, by model, direction (input, output) and use (chat: the turns; summary: the session summaries).",
    ["model", "direction", "use"],
)
llm_cost = Counter(
    "llmbacker_llm_cost_usd_total",
    "What the model calls cost in USD (LLM_PRICES), by model and use (chat, summary).",
    ["model", "use"],
)
tool_calls = Counter(
    "llmbacker_tool_calls_total", "Tool calls run, by tool and outcome (ok, error).", ["tool", "outcome"]
)
summary_tasks = Counter(
    "llmbacker_summary_tasks_total",
    "Summary task runs, by outcome: written, skipped (nothing new), retried, failed, error.",
    ["outcome"],
)
errors = Counter("llmbacker_errors_total", "Error frames sent to clients, by code.", ["code"])


def _safely(count) -> None:
    try:
        count()
    except Exception:
        logger.warning("could not count a metric", exc_info=True)


def socket_opened() -> None:
    """Count a chat socket accepted."""
    _safely(sockets_open.inc)


def socket_closed() -> None:
    """Count a chat socket gone."""
    _safely(sockets_open.dec)


def turn_started() -> None:
    """Count a turn started."""
    _safely(turns_started.inc)


def turn_finished(
    *,
    outcome: str,
    model: str,
    first_token_seconds_: float | None,
    seconds: float,
    tokens_by_model: dict[str, tuple[int, int]],
    cost_by_model: dict[str, Decimal],
) -> None:
    """Count a turn ended, its latencies, and its tokens (prompt, completion) and cost by the model that used them."""

    def count() -> None:
        turns_finished.labels(outcome).inc()
        if first_token_seconds_ is not None:
            first_token_seconds.labels(model).observe(first_token_seconds_)
        turn_seconds.labels(model).observe(seconds)
        _spend_count(tokens_by_model=tokens_by_model, cost_by_model=cost_by_model, use="chat")

    _safely(count)


def summary_spent(*, tokens_by_model: dict[str, tuple[int, int]], cost_by_model: dict[str, Decimal]) -> None:
    """Count the tokens (prompt, completion) and cost of a run of the summary task's model calls, by model."""
    _safely(lambda: _spend_count(tokens_by_model=tokens_by_model, cost_by_model=cost_by_model, use="summary"))


def _spend_count(*, tokens_by_model: dict[str, tuple[int, int]], cost_by_model: dict[str, Decimal], use: str) -> None:
    for used_by, (prompt_tokens, completion_tokens) in tokens_by_model.items():
        if prompt_tokens:
            llm_tokens.labels(used_by, "input", use).inc(prompt_tokens)
        if completion_tokens:
            llm_tokens.labels(used_by, "output", use).inc(completion_tokens)
    for used_by, cost in cost_by_model.items():
        if cost:
            llm_cost.labels(used_by, use).inc(float(cost))


def tool_called(*, tool: str, ok: bool) -> None:
    """Count a tool call run; `tool` must be a registered name (labels stay few)."""
    _safely(lambda: tool_calls.labels(tool, "ok" if ok else "error").inc())


def summary_task_ended(outcome: str) -> None:
    """Count a run of the summary task."""
    _safely(lambda: summary_tasks.labels(outcome).inc())


def error_sent(code: str) -> None:
    """Count an error frame sent to a client."""
    _safely(lambda: errors.labels(code).inc())


def _registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def metrics_served() -> bool:
    """Whether `/metrics` is on: METRICS_ENABLED, and a METRICS_TOKEN unless DEBUG (production fails closed)."""
    return settings.METRICS_ENABLED and bool(settings.METRICS_TOKEN or settings.DEBUG)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the figures in Prometheus' text format; 404 when off, 401 without the token."""
    if not metrics_served():
        raise Http404("metrics are off")
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("a bearer token is needed\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
