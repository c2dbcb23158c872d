"""The audit record: contiguous seqs under concurrency, session ends, summaries and their retries."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit import services
from audit.models import ChatSession, Event, EventType, SessionStatus, SocketLease, Summary, SummaryStatus
from audit.summaries import summary_generate, transcript_parts
from audit.tasks import SUMMARY_GRACE, SUMMARY_MAX_RETRIES, session_summarize, sessions_sweep

from .fake_groq import status_reply

pytestmark = pytest.mark.django_db(transaction=True)


def session_with_messages(*messages: str) -> ChatSession:
    session = ChatSession.objects.create(id=uuid.uuid4(), anon_key="k" * 32, model="m")
    for n, text in enumerate(messages):
        kind = EventType.USER_MESSAGE if n % 2 == 0 else EventType.ASSISTANT_MESSAGE
        services.event_record(session_id=session.id, type=kind, content=text)
    return session


def test_seqs_stay_contiguous_under_concurrent_writers():
    session = session_with_messages()
    writers, per_writer = 8, 25
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for n in range(per_writer):
                services.event_record(session_id=session.id, type=EventType.SYSTEM, content=str(n))
        except BaseException as exc:  # reported below, so a failing thread fails the test
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    seqs = list(Event.objects.filter(session=session).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, writers * per_writer + 1))
    session.refresh_from_db()
    assert session.next_seq == writers * per_writer + 1


def test_counters_follow_the_events():
    session = session_with_messages("q", "a")
    services.event_record(session_id=session.id, type=EventType.TOOL_CALL, content="t", data={"name": "t"})
    services.event_record(
        session_id=session.id,
        type=EventType.ASSISTANT_MESSAGE,
        content="b",
        data={"usage": {"prompt_tokens": 30, "completion_tokens": 4}},
    )
    services.event_record(session_id=session.id, type=EventType.ERROR, content="x", data={"code": "internal"})
    session.refresh_from_db()
    assert (session.turn_count, session.message_count, session.tool_call_count, session.error_count) == (1, 3, 1, 1)
    assert (session.prompt_tokens, session.completion_tokens) == (30, 4)


def test_a_session_is_titled_by_its_first_message_until_its_summary_names_it(fake_groq):
    session = session_with_messages("Which  trains go\nto Porto?", "Several.", "And to Lisbon?")
    session.refresh_from_db()
    assert session.title == "Which trains go to Porto?"
    long = "Please help me plan a three week trip through Portugal and Spain on a budget"
    assert services._title_from(long) == "Please help me plan a three week trip through Portugal and…"
    services.session_end(session_id=session.id)  # the fake model titles its summaries "Fake summary"
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="One more thing")
    session.refresh_from_db()
    assert session.title == "Fake summary"


def test_ending_a_session_records_its_duration_and_writes_the_summary_once():
    session = session_with_messages("Which trains go to Porto?", "Several.")
    assert services.session_end(session_id=session.id) is True
    assert services.session_end(session_id=session.id) is False
    session.refresh_from_db()
    assert session.status == SessionStatus.ENDED and session.duration_seconds >= 0
    summary = Summary.objects.get(session=session)
    assert (summary.status, summary.covers_seq, summary.attempts) == (SummaryStatus.DONE, 2, 1)
    # The task running again (a re-queued message, a second worker) changes nothing.
    assert session_summarize.apply(args=[str(session.id)]).get() is False
    assert Summary.objects.filter(session=session).count() == 1
    assert Summary.objects.get(session=session).attempts == 1


def lease(session: ChatSession, seconds: float = 30) -> uuid.UUID:
    """Lease a socket on the session, as a connecting consumer does; return the lease id."""
    lease_id = uuid.uuid4()
    services.socket_lease_open(
        session_id=session.id, lease_id=lease_id, visitor="anon:x", address="127.0.0.1", seconds=seconds
    )
    return lease_id


def test_a_resumed_session_is_summarized_again_over_the_whole_conversation():
    session = session_with_messages("first question", "first answer")
    assert services.socket_leave(session_id=session.id, lease_id=lease(session)) is True
    opened = services.session_open(
        session_id=session.id, user_id=None, anon_key=session.anon_key, model="m", llm_mode="offline"
    )
    assert opened.resumed and opened.session.status == SessionStatus.ACTIVE
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="second question")
    services.socket_leave(session_id=session.id, lease_id=lease(session))
    summary = Summary.objects.get(session=session)
    assert summary.covers_seq == 3
    assert "2 message(s)" in summary.text


def test_summary_is_marked_failed_when_the_model_keeps_failing(fake_groq):
    fake_groq.enqueue(*[status_reply(503, message="down")] * (SUMMARY_MAX_RETRIES + 1))
    session = session_with_messages("hello", "hi")
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert summary.status == SummaryStatus.FAILED
    assert "503" in summary.error
    assert summary.attempts == SUMMARY_MAX_RETRIES + 1
    assert len([r for r in fake_groq.requests if r.get("response_format")]) == SUMMARY_MAX_RETRIES + 1
    # Once the model is back, writing it again works.
    assert summary_generate(session_id=session.id) is True
    assert Summary.objects.get(session=session).status == SummaryStatus.DONE


def test_the_last_socket_out_ends_the_session_and_an_earlier_one_does_not():
    session = session_with_messages("two tabs", "ok")
    first, second = lease(session), lease(session)
    assert services.socket_leave(session_id=session.id, lease_id=first) is False
    session.refresh_from_db()
    assert session.status == SessionStatus.ACTIVE
    assert services.socket_leave(session_id=session.id, lease_id=second) is True
    session.refresh_from_db()
    assert session.status == SessionStatus.ENDED


def test_a_socket_whose_lease_ran_out_does_not_keep_its_session_open():
    """A tab in a process that crashed: its lease is never dropped, it runs out."""
    session = session_with_messages("crashed tab", "ok")
    lease(session, seconds=-1)
    assert services.socket_leave(session_id=session.id, lease_id=lease(session)) is True


def test_sessions_whose_sockets_vanished_are_ended_by_the_sweep_within_a_lease(settings):
    settings.CHAT_SOCKET_LEASE_SECONDS = 30
    vanished = session_with_messages("anyone there?", "yes")
    connected = session_with_messages("still here")
    just_opened = session_with_messages("hello")
    lease(vanished, seconds=-31)  # its process died: the lease ran out over a lease length ago
    lease(connected, seconds=30)
    old = timezone.now() - timedelta(seconds=31)
    ChatSession.objects.filter(pk__in=[vanished.pk, connected.pk]).update(last_activity_at=old)
    result = sessions_sweep.apply().get()
    assert (result["ended"], result["summaries_requeued"]) == (1, 0)
    statuses = dict(ChatSession.objects.values_list("id", "status"))
    assert statuses[vanished.id] == SessionStatus.ENDED
    assert statuses[connected.id] == statuses[just_opened.id] == SessionStatus.ACTIVE
    assert Summary.objects.get(session=vanished).status == SummaryStatus.DONE


def test_the_sweep_closes_the_turn_of_a_crashed_process_with_an_empty_stopped_reply(settings):
    settings.CHAT_SOCKET_LEASE_SECONDS = 30
    session = session_with_messages("first", "answer", "cut off by a crash")
    crashed = lease(session, seconds=-31)
    ChatSession.objects.filter(pk=session.pk).update(
        turn_started_at=timezone.now(), turn_lease=crashed, last_activity_at=timezone.now() - timedelta(minutes=1)
    )
    assert sessions_sweep.apply().get()["ended"] == 1
    session.refresh_from_db()
    assert (session.status, session.turn_lease, session.turn_started_at) == (SessionStatus.ENDED, None, None)
    events = list(Event.objects.filter(session=session).order_by("seq"))
    assert [(e.seq, e.type) for e in events][-2:] == [(3, "user_message"), (4, "assistant_message")]
    assert events[-1].data["stop_reason"] == "server_lost" and events[-1].content == ""
    assert session.message_count == 4
    assert Summary.objects.get(session=session).covers_seq == 4


def test_a_lease_renewed_after_running_out_counts_again_until_the_sweep_deletes_it():
    session = session_with_messages("blip")
    lease_id = lease(session, seconds=-5)
    assert services.sockets_live_count(visitor="anon:x", address="127.0.0.1") == (0, 0)
    assert services.socket_leases_renew(lease_ids=[lease_id], seconds=30) == 1
    assert services.sockets_live_count(visitor="anon:x", address="127.0.0.1") == (1, 1)
    assert services.sockets_live_count(visitor="anon:y", address="127.0.0.1") == (0, 1)
    assert services.sockets_live_count(visitor="anon:x") == (1, 0)
    SocketLease.objects.filter(pk=lease_id).update(expires_at=timezone.now() - timedelta(hours=2))
    assert sessions_sweep.apply().get()["leases_deleted"] == 1
    assert not SocketLease.objects.filter(pk=lease_id).exists()


def test_a_message_on_an_ended_session_reopens_it():
    session = session_with_messages("one", "two")
    services.session_end(session_id=session.id)
    services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="three")
    session.refresh_from_db()
    assert session.status == SessionStatus.ACTIVE and session.ended_at is None


def test_only_the_owner_may_open_a_session():
    session = session_with_messages()
    with pytest.raises(services.SessionForbidden):
        services.session_open(session_id=session.id, user_id=None, anon_key="other", model="m", llm_mode="offline")
    with pytest.raises(services.SessionForbidden):
        services.session_open(session_id=session.id, user_id=None, anon_key="", model="m", llm_mode="offline")


def test_one_turn_at_a_time_per_session():
    """A claim returns the frame_seq the turn numbers its frames after; a busy session returns None."""
    session = session_with_messages()
    stale_after = timedelta(minutes=10)
    tab, other_tab = lease(session), lease(session)
    assert services.turn_claim(session_id=session.id, lease_id=tab, stale_after=stale_after, owner="turns.a") == (
        services.Claim(base=0, shared=True)
    )
    assert services.turn_claim(session_id=session.id, lease_id=other_tab, stale_after=stale_after) is None
    assert ChatSession.objects.get(pk=session.pk).turn_owner == "turns.a"
    services.turn_release(session_id=session.id, lease_id=tab, frame_seq=7)
    released = ChatSession.objects.get(pk=session.pk)
    assert (released.turn_lease, released.turn_owner, released.frame_seq) == (None, "", 7)
    assert services.turn_claim(session_id=session.id, lease_id=other_tab, stale_after=stale_after).base == 7
    # A hung turn is taken over after `stale_after` even though its socket is live; its
    # frames were never recorded, so the next turn numbers its frames well past them.
    ChatSession.objects.filter(pk=session.pk).update(turn_started_at=timezone.now() - timedelta(minutes=11))
    taken_over = services.turn_claim(session_id=session.id, lease_id=tab, stale_after=stale_after)
    assert taken_over.base == 7 + services.ORPHAN_FRAME_GAP


def test_a_turn_claim_is_free_once_its_sockets_lease_runs_out():
    session = session_with_messages()
    stale_after = timedelta(minutes=10)
    crashed, survivor = lease(session), lease(session)
    assert services.turn_claim(session_id=session.id, lease_id=crashed, stale_after=stale_after).base == 0
    assert services.turn_claim(session_id=session.id, lease_id=survivor, stale_after=stale_after) is None
    SocketLease.objects.filter(pk=crashed).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.turn_claim(session_id=session.id, lease_id=survivor, stale_after=stale_after) is not None
    # The late release of the crashed socket's turn leaves the new claim alone.
    services.turn_release(session_id=session.id, lease_id=crashed, frame_seq=3)
    after = ChatSession.objects.get(pk=session.pk)
    assert (after.turn_lease, after.frame_seq) == (survivor, services.ORPHAN_FRAME_GAP)


def test_a_socket_whose_release_failed_may_claim_its_next_turn():
    session = session_with_messages()
    tab = lease(session)
    stale_after = timedelta(minutes=10)
    # The only socket of its session: nobody else to tell that a turn started.
    assert services.turn_claim(session_id=session.id, lease_id=tab, stale_after=stale_after).shared is False
    assert services.turn_claim(session_id=session.id, lease_id=tab, stale_after=stale_after) is not None


def test_a_broker_outage_does_not_stop_a_session_ending(broker_down, caplog):
    session = session_with_messages("are you there?", "yes")
    assert services.session_end(session_id=session.id) is True
    session.refresh_from_db()
    assert session.status == SessionStatus.ENDED
    assert not Summary.objects.filter(session=session).exists()
    # The send was tried and its failure logged (the sweep queues it again later),
    # from the sender's own thread: the caller's thread never waits on the broker.
    deadline = time.monotonic() + 15
    while not (failures := [r for r in caplog.records if "could not send" in r.getMessage()]):
        assert time.monotonic() < deadline, "the failed send was never logged"
        time.sleep(0.05)
    assert str(session.id) in failures[0].getMessage()
    assert failures[0].threadName.startswith("broker-send")


def test_the_sweep_queues_summaries_that_never_arrived():
    lost = session_with_messages("lost summary", "indeed")
    recent = session_with_messages("just ended", "ok")
    for session in (lost, recent):
        ChatSession.objects.filter(pk=session.pk).update(status=SessionStatus.ENDED, ended_at=timezone.now())
    ChatSession.objects.filter(pk=lost.pk).update(ended_at=timezone.now() - SUMMARY_GRACE - timedelta(minutes=1))
    assert sessions_sweep.apply().get()["summaries_requeued"] == 1
    assert Summary.objects.get(session=lost).status == SummaryStatus.DONE
    assert not Summary.objects.filter(session=recent).exists()
    # Once written, it is not queued again.
    assert sessions_sweep.apply().get()["summaries_requeued"] == 0


def test_two_writers_racing_leave_one_summary(fake_groq):
    """Two workers (or a re-run racing the automatic task) both write: one row, one winner."""
    session = session_with_messages("race me", "ok")
    ChatSession.objects.filter(pk=session.pk).update(status=SessionStatus.ENDED, ended_at=timezone.now())
    start = threading.Barrier(2)
    stored: list[bool] = []

    def write() -> None:
        try:
            start.wait()
            stored.append(summary_generate(session_id=session.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Summary.objects.filter(session=session).count() == 1
    assert Summary.objects.get(session=session).status == SummaryStatus.DONE
    # Either the second claim saw it done, or its save lost the race: exactly one write.
    assert sorted(stored) == [False, True]


def test_transcripts_split_at_line_ends_and_lose_nothing():
    transcript = "User: short\nAssistant: " + "x" * 250 + "\nUser: another line\n"
    parts = transcript_parts(transcript, limit=100)
    assert "".join(parts) == transcript
    assert all(len(part) <= 100 for part in parts)
    assert parts[0] == "User: short\n"


def test_a_long_transcript_is_summarized_in_parts_then_combined(fake_groq, settings):
    settings.CHAT_SUMMARY_PART_CHARS = 400
    session = session_with_messages(*[f"message {n} " + "about the Lisbon trip " * 4 for n in range(12)])
    services.session_end(session_id=session.id)
    asked = [r["messages"][-1]["content"] for r in fake_groq.requests if r.get("response_format")]
    parts, combined = asked[:-1], asked[-1]
    assert len(parts) >= 3
    assert all(text.startswith(f"Part {n} of {len(parts)}:") for n, text in enumerate(parts, 1))
    assert all(len(text.split(":\n", 1)[1]) <= 400 for text in parts)
    assert combined.startswith("The conversation was too long to read at once")
    assert f"Part {len(parts)}: A short fake summary of the conversation." in combined
    assert Summary.objects.get(session=session).status == SummaryStatus.DONE


def test_the_offline_model_also_summarizes_in_parts(settings):
    settings.CHAT_SUMMARY_PART_CHARS = 400
    session = session_with_messages(*[f"message {n} " + "about the Lisbon trip " * 4 for n in range(12)])
    services.session_end(session_id=session.id)
    summary = Summary.objects.get(session=session)
    assert summary.status == SummaryStatus.DONE
    assert summary.text.startswith("The conversation was too long to read at once")
    assert "Part 1: The visitor sent" in summary.text


def test_a_session_deleted_while_its_summary_is_written_is_not_an_error(fake_groq):
    session = session_with_messages("soon gone", "yes")
    ChatSession.objects.filter(pk=session.pk).update(status=SessionStatus.ENDED, ended_at=timezone.now())
    covers = services.summary_claim(session_id=session.id)
    ChatSession.objects.filter(pk=session.pk).delete()
    fields = services.SummaryFields(title="t", text="x", key_topics=[], action_items=[], sentiment="neutral", model="m")
    assert services.summary_save(session_id=session.id, covers_seq=covers, fields=fields) is False
