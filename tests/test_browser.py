"""The chat page in real headless Chromium against daphne, with the fake Groq server answering."""

import re

import pytest
from playwright.sync_api import expect

from audit.models import ChatSession, Event

from .conftest import ARTIFACTS
from .fake_groq import text_reply

pytestmark = pytest.mark.django_db(transaction=True)

ASSISTANT = ".msg[data-role='assistant']"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def chat_open(page, url: str) -> None:
    """Open the chat page and wait until its socket is connected."""
    page.goto(url + "/")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)


STAFF_PASSWORD = "staff-pass"


@pytest.fixture
def staff_account(settings) -> str:
    """Create a superuser whose password daphne (on the project's own hasher) can check; return the username."""
    from django.contrib.auth import get_user_model

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    get_user_model().objects.create_superuser("staff", password=STAFF_PASSWORD)
    return "staff"


def admin_login(page, base_url: str, username: str, password: str, next_path: str) -> None:
    """Log in through the admin's own form, landing on `next_path`."""
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_chat_streams_shows_a_tool_call_and_stops(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    shot(page, "01-connected")

    # A slow reply (the fake server's "slow" answer): the text grows while it streams.
    send(page, "please be slow")
    reply = page.locator(ASSISTANT).last
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"))
    expect(reply.locator(".msg-text")).to_contain_text("word3", timeout=10_000)
    early = reply.locator(".msg-text").inner_text()
    expect(reply.locator(".msg-text")).to_contain_text("word12", timeout=10_000)
    later = reply.locator(".msg-text").inner_text()
    assert later.startswith(early) and len(later) > len(early)
    shot(page, "02-streaming")

    page.click("#stop")
    expect(reply).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=5_000)
    expect(reply.locator(".msg-meta")).to_contain_text("stopped")
    assert "word199" not in reply.locator(".msg-text").inner_text()
    shot(page, "03-stopped")

    # The fake server answers "time" with a current_time call, then phrases the result.
    send(page, "what time is it?")
    card = page.locator(".tool-call").last
    expect(card.locator(".tool-name")).to_have_text("current_time", timeout=10_000)
    expect(card.locator(".tool-result")).to_contain_text("timezone", timeout=10_000)
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("The tool said", timeout=10_000)
    shot(page, "04-tool-call")

    session_id = page.locator("#session-id").inner_text().strip()
    session = ChatSession.objects.get(pk=session_id)
    kinds = list(Event.objects.filter(session=session).order_by("seq").values_list("type", flat=True))
    assert kinds == [
        "user_message",
        "assistant_message",
        "user_message",
        "tool_call",
        "tool_result",
        "assistant_message",
    ]
    stopped = Event.objects.filter(session=session, type="assistant_message").order_by("seq").first()
    assert stopped.data["stopped"] is True and stopped.content.startswith("word0 word1")


def test_reload_resumes_the_session_with_its_history(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "remember the word pineapple")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("pineapple", timeout=10_000)
    expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)
    first_id = page.locator("#session-id").inner_text().strip()

    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    assert page.locator("#session-id").inner_text().strip() == first_id
    expect(page.locator(".msg[data-role='user']")).to_have_count(1)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text("remember the word pineapple")
    shot(page, "05-resumed")

    page.click("#new-session")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    assert page.locator("#session-id").inner_text().strip() != first_id
    expect(page.locator(".msg")).to_have_count(0)


def test_a_reload_mid_reply_redraws_the_earlier_tool_cards_once_the_reply_is_done(
    daphne_server, browser_page, fake_groq_server
):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "what time is it?")
    expect(page.locator(".tool-call .tool-result")).to_contain_text("timezone", timeout=10_000)
    expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)
    send(page, "please be slow")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("word3", timeout=10_000)

    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator(ASSISTANT).last).to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)
    # While the reply runs, the history above it is the session frame's plain one.
    page.click("#stop")
    expect(page.locator(ASSISTANT).last.locator(".msg-meta")).to_contain_text("stopped", timeout=10_000)
    # Once it is done, the recorded events draw the earlier reply's tool card again.
    card = page.locator(".tool-call")
    expect(card).to_have_count(1, timeout=10_000)
    expect(card.locator(".tool-name")).to_have_text("current_time")
    expect(page.locator(".msg[data-role='user']")).to_have_count(2)

    page.click("#new-session")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator("#input")).to_be_focused()


def test_staff_log_in_and_find_the_session_in_the_admin(daphne_server, browser_page, staff_account):
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "hello admin view")
    expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)
    session_id = page.locator("#session-id").inner_text().strip()

    page.set_viewport_size({"width": 1400, "height": 900})
    admin_login(page, daphne_server, staff_account, STAFF_PASSWORD, "/admin/audit/chatsession/")
    expect(page.locator(f"a[href*='{session_id}']")).to_have_count(1, timeout=10_000)
    shot(page, "06-admin-list")
    # At 1,400 px the list fits: no sideways scroll, the title on one line, no side menu taking the width.
    layout = page.evaluate(
        """(sessionId) => {
            const results = document.querySelector('.results');
            const row = document.querySelector(`a[href*='${sessionId}']`).closest('tr');
            const range = document.createRange();
            range.selectNodeContents(row.querySelector('td.field-title_or_id'));
            const lines = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top))).size;
            return {overflow: results.scrollWidth - results.clientWidth, titleLines: lines,
                    sideMenu: document.getElementById('nav-sidebar') !== null};
        }""",
        session_id,
    )
    assert layout == {"overflow": 0, "titleLines": 1, "sideMenu": False}
    page.goto(f"{daphne_server}/admin/audit/chatsession/{session_id}/change/")
    expect(page.locator("body")).to_contain_text("hello admin view")
    shot(page, "07-admin-session")


def test_a_model_failure_shows_in_place_and_the_chat_goes_on(daphne_server, browser_page, fake_groq_server):
    from .fake_groq import cut_reply

    fake_groq_server.reset()
    fake_groq_server.enqueue(cut_reply("Half an ans"))
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "tell me everything")
    reply = page.locator(ASSISTANT).last
    expect(reply.locator(".msg-error")).to_contain_text("llm_unavailable", timeout=10_000)
    expect(reply.locator(".msg-text")).to_have_text("Half an ans")
    expect(reply).not_to_have_class(re.compile(r"\bstreaming\b"))
    shot(page, "08-model-failure")
    send(page, "try again")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("You said: try again", timeout=10_000)


def test_staff_watch_a_reply_stream_live_in_the_admin(daphne_server, browser_page, fake_groq_server, staff_account):
    fake_groq_server.reset()
    visitor = browser_page
    chat_open(visitor, daphne_server)
    send(visitor, "hello")
    expect(visitor.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)
    session_id = visitor.locator("#session-id").inner_text().strip()

    staff = visitor.context.browser.new_context().new_page()
    admin_login(staff, daphne_server, staff_account, STAFF_PASSWORD, f"/admin/audit/chatsession/{session_id}/change/")
    expect(staff.locator("#live-view .live-state")).to_contain_text("watching", timeout=10_000)
    staff.wait_for_timeout(1000)  # the watch request reaches the visitor's socket through the layer

    # A reply of 60 words, 0.1 s apart: the watcher sees it grow, then end.
    fake_groq_server.enqueue(text_reply(" ".join(f"word{n}" for n in range(60)), delay=0.1))
    send(visitor, "tell me a story")
    expect(staff.locator("#live-view .live-user")).to_have_text("User: tell me a story", timeout=10_000)
    streaming = staff.locator("#live-view .live-assistant").last
    expect(streaming).to_contain_text("word5", timeout=10_000)
    assert "word59" not in streaming.inner_text()
    expect(staff.locator("#live-view .live-meta").last).to_contain_text("turn over", timeout=15_000)
    expect(streaming).to_contain_text("word59")
    shot(staff, "09-admin-live-view")
    staff.context.close()


def test_a_report_page_draws_its_charts(daphne_server, browser_page, staff_account):
    from datetime import timedelta

    from django.utils import timezone

    from audit.models import ReportKind
    from audit.reports import report_build

    page = browser_page
    chat_open(page, daphne_server)
    send(page, "what time is it?")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("The tool said", timeout=10_000)
    now = timezone.now()
    report = report_build(start=now - timedelta(hours=1), end=now + timedelta(hours=1), kind=ReportKind.CUSTOM)

    admin_login(page, daphne_server, staff_account, STAFF_PASSWORD, f"/admin/audit/report/{report.pk}/change/")
    charts = page.locator("#report-charts figure.chart")
    expect(charts.first).to_be_visible(timeout=10_000)
    captions = charts.locator("figcaption").all_inner_texts()
    assert {"Activity", "Time to first token", "Tool calls"} <= set(captions)
    tool_chart = charts.filter(has=page.locator("figcaption", has_text=re.compile(r"^Tool calls$")))
    expect(tool_chart.locator(".bar-label")).to_have_text(["current_time"])
    shot(page, "10-report-charts")
