"""`/metrics`: the figures change as turns run, scraped over HTTP from daphne; who may read them."""

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.typing import Origin

from audit.costs import cost_usd
from audit.models import Summary

from .conftest import ARTIFACTS, daphne_start, free_port, on_redis, process_stop, subprocess_env, visitor_cookie

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-test-token"


def scrape(base_url: str, token: str | None = TOKEN) -> str:
    """Return the text of /metrics, read with the bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urlopen(Request(f"{base_url}/metrics", headers=headers), timeout=10) as response:  # noqa: S310 (local)
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Return the value of sample `name` with exactly these labels (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for entry in family.samples:
            if entry.name == name and entry.labels == labels:
                return entry.value
    return 0.0


@pytest.fixture
def metrics_stack(fake_groq, maybe_worker, tmp_path) -> Iterator[str]:
    """daphne and, with Redis, a Celery worker sharing one PROMETHEUS_MULTIPROC_DIR; yield daphne's URL.

    Without Redis (the embedded default) the summary task runs in daphne's own process.
    """
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": TOKEN}
    maybe_worker(**env)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    with open(ARTIFACTS / "daphne-metrics.log", "ab") as log:
        process = daphne_start(port=port, log=log, env=subprocess_env(groq_url=fake_groq.url, **env))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process_stop(process)


@pytest.fixture
def maybe_worker(request):
    """The conftest's worker starter when Redis is there; without it there is no worker to start."""
    if not on_redis():
        return lambda **env: None
    return request.getfixturevalue("worker_start")


async def chat_with_tool(base_url: str, cookie: str) -> tuple[dict, list[dict], float]:
    """Send bad JSON, then a turn calling a tool; return its `done`, its frames, and the open-sockets gauge then."""
    port = base_url.rsplit(":", 1)[1]
    async with connect(
        f"ws://127.0.0.1:{port}/ws/session/{uuid.uuid4()}/",
        origin=Origin(base_url),
        additional_headers={"Cookie": cookie},
        open_timeout=15,
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "session"
        open_now = sample(await asyncio.to_thread(scrape, base_url), "llmbacker_sockets_open")
        await ws.send("{not json")
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "message", "content": "what time is it?"}))
        frames: list[dict] = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
    return frames[-1], frames, open_now


def test_the_figures_follow_a_turn_and_the_summary_task(metrics_stack):
    base_url = metrics_stack
    before = scrape(base_url)
    assert sample(before, "llmbacker_turns_started_total") == 0
    done, frames, open_during = asyncio.run(chat_with_tool(base_url, visitor_cookie(base_url)))
    assert [frame["ok"] for frame in frames if frame["type"] == "tool_result"] == [True]
    assert open_during == 1

    # The socket is closed: its session ends and the summary task runs (in the worker, with Redis).
    deadline = time.monotonic() + 60
    text = scrape(base_url)
    while time.monotonic() < deadline and not sample(text, "llmbacker_summary_tasks_total", outcome="written"):
        time.sleep(0.25)
        text = scrape(base_url)
    model = done["model"]
    assert sample(text, "llmbacker_summary_tasks_total", outcome="written") == 1
    assert sample(text, "llmbacker_sockets_open") == 0
    assert sample(text, "llmbacker_turns_started_total") == 1
    assert sample(text, "llmbacker_turns_finished_total", outcome="done") == 1
    assert sample(text, "llmbacker_turns_finished_total", outcome="error") == 0
    assert sample(text, "llmbacker_turn_first_token_seconds_count", model=model) == 1
    assert sample(text, "llmbacker_turn_duration_seconds_count", model=model) == 1
    assert sample(text, "llmbacker_turn_duration_seconds_sum", model=model) == pytest.approx(
        done["duration_ms"] / 1000, abs=0.05
    )
    chat_tokens = {"model": model, "use": "chat"}
    assert (
        sample(text, "llmbacker_llm_tokens_total", direction="input", **chat_tokens) == done["usage"]["prompt_tokens"]
    )
    assert (
        sample(text, "llmbacker_llm_tokens_total", direction="output", **chat_tokens)
        == done["usage"]["completion_tokens"]
    )
    assert done["usage"]["prompt_tokens"] > 0
    charged = cost_usd(model=model, **done["usage"])
    assert charged
    assert sample(text, "llmbacker_llm_cost_usd_total", **chat_tokens) == pytest.approx(float(charged))
    # The summary's model call (fake Groq's JSON answer uses 30 + 15 tokens), counted apart from the chat's.
    summary = Summary.objects.get()
    assert (summary.prompt_tokens, summary.completion_tokens) == (30, 15)
    assert summary.cost_usd == cost_usd(model=summary.model, prompt_tokens=30, completion_tokens=15)
    summary_tokens = {"model": summary.model, "use": "summary"}
    assert sample(text, "llmbacker_llm_tokens_total", direction="input", **summary_tokens) == 30
    assert sample(text, "llmbacker_llm_tokens_total", direction="output", **summary_tokens) == 15
    assert sample(text, "llmbacker_llm_cost_usd_total", **summary_tokens) == pytest.approx(float(summary.cost_usd))
    assert sample(text, "llmbacker_tool_calls_total", tool="current_time", outcome="ok") == 1
    assert sample(text, "llmbacker_errors_total", code="invalid_json") == 1


def test_without_the_token_the_figures_are_refused(metrics_stack):
    with pytest.raises(HTTPError) as refused:
        scrape(metrics_stack, token=None)
    assert refused.value.code == 401
    with pytest.raises(HTTPError) as wrong:
        scrape(metrics_stack, token="not-it")
    assert wrong.value.code == 401


@pytest.mark.parametrize(
    ("debug", "enabled", "token", "status"),
    [
        (True, True, "", 200),  # development: open
        (False, True, "", 404),  # production without a token: off
        (False, True, "s3cret", 200),  # production with the token
        (True, False, "s3cret", 404),  # switched off
    ],
)
def test_who_may_read_the_figures(client, settings, debug, enabled, token, status):
    settings.DEBUG, settings.METRICS_ENABLED, settings.METRICS_TOKEN = debug, enabled, token
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", secure=True, **headers)
    assert response.status_code == status
    if status == 200:
        assert b"llmbacker_turns_started_total" in response.content
