"""The chat page people use, in real headless Chromium against daphne and the fake Groq server."""

import re
import subprocess

import pytest
from playwright.sync_api import expect

from audit.models import ChatSession

from .conftest import ARTIFACTS, daphne_start, free_port, process_stop
from .fake_groq import text_reply, tool_calls_reply
from .test_browser import ASSISTANT, chat_open, send, shot

pytestmark = pytest.mark.django_db(transaction=True)

MARKDOWN = """# Trip plan

Here is **the plan**:

- pack the bags
- catch the train

| day | city |
| --- | --- |
| 1 | Lisbon |

```python
print("hello")
```

See [the timetable](https://example.com/timetable).

<script>window.__pwned = "script"</script>
<img src="x" onerror="window.__pwned = 'img'">
"""


def finished(page) -> None:
    expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=10_000)


def test_markdown_renders_and_html_from_the_model_never_runs(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(text_reply(MARKDOWN))
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "plan my trip")
    finished(page)
    reply = page.locator(ASSISTANT).last.locator(".msg-text")
    expect(reply.locator("h1")).to_have_text("Trip plan")
    expect(reply.locator("li")).to_have_count(2)
    expect(reply.locator("table td").first).to_have_text("1")
    expect(reply.locator("pre code")).to_contain_text('print("hello")')
    expect(page.locator(ASSISTANT).last.locator(".copy-code")).to_have_count(1)
    link = reply.locator("a", has_text="the timetable")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", re.compile("noopener"))
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages script").count() == 0
    assert page.locator("#messages [onerror]").count() == 0
    shot(page, "11-markdown")


def test_replies_carry_figures_a_copy_button_and_timestamps(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "hello")
    finished(page)
    reply = page.locator(ASSISTANT).last
    expect(reply).to_have_attribute("title", re.compile("first token"))
    expect(reply.locator(".copy-reply")).to_have_count(1)
    expect(page.locator(".msg[data-role='user'] time")).to_have_count(1)
    expect(reply.locator("time")).to_have_count(1)


def test_the_composer_says_why_it_is_waiting(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "please be slow")
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#composer-hint")).not_to_be_empty()
    page.click("#stop")
    finished(page)
    expect(page.locator("#send")).to_be_enabled()


def test_the_sidebar_lists_sessions_and_resumes_one(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "first topic: bicycles")
    finished(page)
    first_id = page.locator("#session-id").inner_text().strip()
    page.click("#new-session")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    send(page, "second topic: kayaks")
    finished(page)
    links = page.locator("#sidebar a.session-link")
    expect(links).to_have_count(2, timeout=10_000)
    page.locator(f"#sidebar a.session-link[data-session-id='{first_id}']").click()
    expect(page.locator("#session-id")).to_have_text(first_id, timeout=10_000)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["first topic: bicycles"], timeout=10_000)
    shot(page, "12-sidebar")


def test_a_resumed_session_shows_its_tool_cards(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(tool_calls_reply([("c1", "current_time", {"timezone": "UTC"})]), text_reply("It is late."))
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "what time is it?")
    finished(page)
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator(".tool-call .tool-name")).to_have_text(["current_time"], timeout=10_000)
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_have_text("It is late.")


def test_the_view_sticks_to_the_bottom_until_the_reader_scrolls_up(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    page.set_viewport_size({"width": 900, "height": 500})
    chat_open(page, daphne_server)
    send(page, "please be slow")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("word60", timeout=15_000)
    expect(page.locator("#jump-latest")).to_be_hidden()
    page.mouse.move(450, 200)
    page.mouse.wheel(0, -3000)
    expect(page.locator("#jump-latest")).to_be_visible(timeout=5_000)
    page.click("#jump-latest")
    expect(page.locator("#jump-latest")).to_be_hidden(timeout=5_000)
    page.click("#stop")
    finished(page)


def test_a_phone_sized_screen_has_no_horizontal_scroll(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(text_reply("A" * 300 + "\n\n```\n" + "x = 1; " * 60 + "\n```\n"))
    page = browser_page
    page.set_viewport_size({"width": 375, "height": 740})
    chat_open(page, daphne_server)
    send(page, "long words please " + "B" * 200)
    finished(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    expect(page.locator("#sidebar-toggle")).to_be_visible()
    shot(page, "13-phone")


@pytest.fixture
def restartable_daphne(django_db_setup, fake_groq_server):
    """A daphne of this test's own, which the test can stop and start again on the same port."""
    port = free_port()
    processes: list[subprocess.Popen] = []
    log = open(ARTIFACTS / "daphne-restart.log", "wb")  # noqa: SIM115 (closed below)

    def start() -> None:
        processes.append(daphne_start(port=port, groq_url=fake_groq_server.url, log=log))

    def crash() -> None:
        # Abrupt, like a crashed or redeployed server: the sockets just drop.
        processes[-1].kill()
        processes[-1].wait(timeout=10)

    start()
    yield f"http://127.0.0.1:{port}", start, crash
    for process in processes:
        process_stop(process)
    log.close()


def test_after_a_server_restart_the_page_reconnects_and_keeps_the_session(
    restartable_daphne, browser_page, fake_groq_server
):
    fake_groq_server.reset()
    url, start, crash = restartable_daphne
    page = browser_page
    chat_open(page, url)
    send(page, "remember the lighthouse")
    finished(page)
    session_id = page.locator("#session-id").inner_text().strip()
    crash()
    expect(page.locator("#status")).to_have_attribute(
        "data-state", re.compile("reconnecting|disconnected"), timeout=10_000
    )
    start()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=20_000)
    assert page.locator("#session-id").inner_text().strip() == session_id
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["remember the lighthouse"])
    send(page, "still there?")
    finished(page)
    expect(page.locator(".msg[data-role='user']")).to_have_count(2)
    shot(page, "14-reconnected")


SLOW_REPLY = " ".join(f"word{n}" for n in range(200))


def test_a_reload_mid_reply_picks_the_stream_up_again(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "please be slow")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("word5", timeout=10_000)
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    # The reply went on at the server: the page shows the text so far, then the rest streams in.
    expect(page.locator(ASSISTANT).last).to_have_class(re.compile(r"\bstreaming\b"))
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=20_000)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["please be slow"])
    expect(page.locator(ASSISTANT)).to_have_count(1)
    assert page.locator(ASSISTANT).last.locator(".msg-text").inner_text().split() == SLOW_REPLY.split()
    shot(page, "15-reload-resumed")


def test_two_pages_on_one_session_both_stream_and_stop_in_either_stops_both(
    daphne_server, browser_page, fake_groq_server
):
    fake_groq_server.reset()
    first = browser_page
    chat_open(first, daphne_server)
    session_id = first.locator("#session-id").inner_text().strip()
    # Another tab of the same visitor: the same cookies.
    context = first.context.browser.new_context()
    context.add_cookies(first.context.cookies())
    second = context.new_page()
    second.goto(f"{daphne_server}/?session={session_id}")
    expect(second.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    send(first, "please be slow")
    for page in (first, second):
        expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_contain_text("word3", timeout=10_000)
    expect(second.locator(".msg[data-role='user'] .msg-text")).to_have_text(["please be slow"])
    second.click("#stop")
    for page in (first, second):
        expect(page.locator(ASSISTANT).last).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=5_000)
        expect(page.locator(ASSISTANT).last.locator(".msg-meta")).to_contain_text("stopped")
    texts = [page.locator(ASSISTANT).last.locator(".msg-text").inner_text() for page in (first, second)]
    assert texts[0] == texts[1] and "word199" not in texts[0]
    # Both go on: the other tab may send the next message.
    send(second, "hello from the second tab")
    for page in (first, second):
        expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(
            ["please be slow", "hello from the second tab"], timeout=10_000
        )
        finished(page)
    shot(second, "16-two-tabs")
    context.close()


def test_a_link_to_someone_elses_session_falls_back_to_the_visitors_own(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    owner = browser_page
    chat_open(owner, daphne_server)
    send(owner, "mine alone")
    finished(owner)
    foreign_id = owner.locator("#session-id").inner_text().strip()
    # Another visitor, who has a session of their own.
    context = owner.context.browser.new_context()
    visitor = context.new_page()
    chat_open(visitor, daphne_server)
    send(visitor, "my own chat")
    finished(visitor)
    own_id = visitor.locator("#session-id").inner_text().strip()

    visitor.goto(f"{daphne_server}/?session={foreign_id}")
    expect(visitor.locator(".msg-error .error-code")).to_have_text("forbidden", timeout=10_000)
    expect(visitor.locator("#session-id")).to_have_text(own_id)
    expect(visitor.locator(".msg[data-role='user'] .msg-text")).to_have_text(["my own chat"])
    assert f"session={own_id}" in visitor.url
    # A later visit is not stuck on the refused session.
    visitor.goto(daphne_server + "/")
    expect(visitor.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(visitor.locator("#session-id")).to_have_text(own_id)
    context.close()


def test_regenerate_the_last_reply_and_edit_the_last_message(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(
        text_reply("First answer."), text_reply("Second answer."), text_reply("Answer to the edit.")
    )
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "a question")
    finished(page)
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_have_text("First answer.")
    # Only the last reply offers Regenerate, only the last message Edit.
    page.click(".msg[data-role='assistant'] .msg-action[data-action='regenerate']")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_have_text("Second answer.", timeout=10_000)
    finished(page)
    expect(page.locator(ASSISTANT)).to_have_count(1)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["a question"])
    # The input has the focus back after the reply.
    expect(page.locator("#input")).to_be_focused()

    page.click(".msg[data-role='user'] .msg-action[data-action='edit']")
    expect(page.locator("#input")).to_have_value("a question")
    expect(page.locator("#composer-hint")).to_contain_text("Editing")
    page.fill("#input", "a better question")
    page.press("#input", "Enter")
    expect(page.locator(ASSISTANT).last.locator(".msg-text")).to_have_text("Answer to the edit.", timeout=10_000)
    finished(page)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["a better question"])
    expect(page.locator(ASSISTANT)).to_have_count(1)
    shot(page, "17-edited")
    # A reload shows the conversation as it now is; the replaced turns stay in the record for staff.
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    expect(page.locator(".msg[data-role='user'] .msg-text")).to_have_text(["a better question"])
    expect(page.locator(ASSISTANT + " .msg-text")).to_have_text(["Answer to the edit."])
    session = ChatSession.objects.get(pk=page.locator("#session-id").inner_text().strip())
    assert session.events.filter(superseded=True).count() == 4 and session.events.count() == 6


def test_rename_and_delete_a_session_from_the_sidebar(daphne_server, browser_page, fake_groq_server):
    fake_groq_server.reset()
    page = browser_page
    chat_open(page, daphne_server)
    send(page, "first chat")
    finished(page)
    first_id = page.locator("#session-id").inner_text().strip()
    page.click("#new-session")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=10_000)
    send(page, "second chat")
    finished(page)
    items = page.locator("#session-list .session-item")
    expect(items).to_have_count(2, timeout=10_000)

    page.once("dialog", lambda dialog: dialog.accept("Trip ideas"))
    page.locator(f"#session-list .session-action[data-action='rename'][data-session-id='{first_id}']").click()
    expect(page.locator(f"#session-list a[data-session-id='{first_id}'] .session-title")).to_have_text("Trip ideas")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#session-list .session-action[data-action='delete'][data-session-id='{first_id}']").click()
    expect(items).to_have_count(1)
    deleted = ChatSession.objects.get(pk=first_id)
    assert deleted.deleted_at is not None and deleted.title == "Trip ideas" and deleted.events.count() == 2
    page.reload()
    expect(page.locator("#session-list .session-item")).to_have_count(1, timeout=10_000)
