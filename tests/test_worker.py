"""The summary path with a real Celery worker process, Redis as the broker, and the test database."""

import asyncio
import json
import time

import pytest

from audit.models import Summary, SummaryStatus

from .conftest import ARTIFACTS, ChatClient
from .fake_groq import text_reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def celery_worker(worker_start):
    return worker_start()


def chat_then_leave(visitor, text: str) -> ChatClient:
    """Chat one turn in a new session and close the socket (which queues the summary)."""

    async def chat() -> ChatClient:
        client = ChatClient(visitor)
        await client.connect()
        await client.turn(text)
        await client.close()
        return client

    return asyncio.run(chat())


def summary_wait(session_id, timeout: float = 60) -> Summary | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = Summary.objects.filter(session_id=session_id, status=SummaryStatus.DONE).first()
        if summary is not None:
            return summary
        time.sleep(0.25)
    return None


def test_the_worker_writes_the_summary_after_the_socket_closes(celery_worker, make_visitor, fake_groq):
    client = chat_then_leave(make_visitor(), "Remind me to water the plants")
    summary = summary_wait(client.session_id)
    assert celery_worker.poll() is None, "the worker died"
    assert summary is not None, "no summary within 60 s; see test-artifacts/celery-worker.log"
    assert summary.title == "Fake summary" and summary.covers_seq == 2
    summary_requests = [r for r in fake_groq.requests if r.get("response_format") == {"type": "json_object"}]
    assert len(summary_requests) == 1
    assert "Remind me to water the plants" in summary_requests[0]["messages"][-1]["content"]
    # It ran in the worker, through Redis, not in this process.
    worker_log = (ARTIFACTS / "celery-worker.log").read_text()
    assert "audit.tasks.session_summarize[" in worker_log and "succeeded" in worker_log


def test_the_worker_sweeps_a_session_a_crash_left_open(celery_worker, fake_groq, settings):
    import uuid
    from datetime import timedelta

    from django.utils import timezone

    from audit import services
    from audit.models import ChatSession, EventType, SessionStatus
    from audit.tasks import sessions_sweep

    # No live socket lease: its process crashed (the worker's own settings apply: a 30 s lease).
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="crashed", model="m")
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="Was I cut off?")
    ChatSession.objects.filter(pk=session.pk).update(last_activity_at=timezone.now() - timedelta(hours=2))
    sessions_sweep.delay()
    summary = summary_wait(session.id)
    assert summary is not None, "the sweep did not end and summarize it; see test-artifacts/celery-worker.log"
    session.refresh_from_db()
    assert session.status == SessionStatus.ENDED
    assert "audit.tasks.sessions_sweep[" in (ARTIFACTS / "celery-worker.log").read_text()


def test_a_worker_killed_mid_summary_does_not_lose_it(worker_start, fake_groq, make_visitor):
    """Late acknowledgement: the task goes back to the queue when its worker process dies."""
    import signal

    import psutil

    from .fake_groq import json_reply

    worker = worker_start(pool="prefork")
    summary = json.dumps(
        {"title": "Survived", "text": "Written after a crash.", "key_topics": [], "sentiment": "neutral"}
    )
    fake_groq.enqueue(text_reply("Noted."), json_reply(summary, delay=30), json_reply(summary))
    client = chat_then_leave(make_visitor(), "Please remember this")
    # The first summary request hangs in the fake model: kill the process running it.
    assert fake_groq.wait_requests(2, timeout=60), "the worker never asked for the summary"
    children = psutil.Process(worker.pid).children()
    assert children, "no pool process to kill"
    for child in children:
        child.send_signal(signal.SIGKILL)
    written = summary_wait(client.session_id)
    assert written is not None, "the summary was lost with its worker process; see test-artifacts/celery-worker.log"
    assert written.title == "Survived"
    assert len([r for r in fake_groq.requests if r.get("response_format")]) == 2
