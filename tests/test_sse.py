"""The event-stream decoder the Groq client reads chunks with (the SDK's raw streaming response)."""

import pytest

from chat.llm.sse import SSEDecoder, StreamCutShort, StreamErrorEvent


def events_of(*reads: bytes) -> list:
    """Feed the reads in order, then the body's end, as the Groq client does; return every event.

    Raises what the decoder raises (StreamCutShort for a body without `[DONE]`).
    """
    decoder = SSEDecoder()
    seen: list = []
    for data in reads:
        seen.extend(decoder.feed(data))
        if decoder.done:
            return seen
    seen.extend(decoder.feed(b"", last=True))
    decoder.end()
    return seen


def test_each_event_is_one_json_object_and_done_ends_the_stream():
    body = b'data: {"n": 1}\n\n: a comment\ndata:{"n": 2}\n\ndata: [DONE]\n\ndata: {"n": 3}\n\n'
    assert events_of(body) == [{"n": 1}, {"n": 2}]


def test_data_lines_of_one_event_are_joined_with_newlines():
    assert events_of(b'data: {"text":\ndata: "two lines"}\n\ndata: [DONE]\n\n') == [{"text": "two lines"}]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_reads_may_split_anything_and_lines_may_end_with_cr_lf_or_cr(newline):
    text = "caf\u00e9 \u2014 \U0001f600"  # two- to four-byte characters, split by the reads below
    body = f'data: {{"text": "{text}"}}\n\ndata: {{"n": 2}}\n\ndata: [DONE]\n\n'.replace("\n", newline).encode()
    expected = [{"text": text}, {"n": 2}]
    for split in range(1, len(body)):
        assert events_of(body[:split], body[split:]) == expected, split
    assert events_of(*(body[i : i + 1] for i in range(len(body)))) == expected


def test_a_cr_lf_split_between_two_reads_ends_one_line_only():
    # Were the CR and the LF taken for two line ends, the blank line between them would end the event early.
    assert events_of(b'data: {"text":\r', b'\ndata: "joined"}\r\n\r\ndata: [DONE]\r\n\r\n') == [{"text": "joined"}]


def test_a_body_that_ends_without_done_is_cut_short_and_its_unfinished_event_dropped():
    decoder = SSEDecoder()
    seen = list(decoder.feed(b'data: {"n": 1}\n\ndata: {"n": 2}\n'))
    seen.extend(decoder.feed(b"", last=True))
    assert seen == [{"n": 1}]
    with pytest.raises(StreamCutShort):
        decoder.end()


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"error": {"message": "upstream exploded"}}\n\n',
        b'event: error\ndata: {"message": "upstream exploded", "error": {"message": "upstream exploded"}}\n\n',
    ],
)
def test_an_error_event_raises_with_the_servers_message_after_the_events_before_it(event):
    decoder = SSEDecoder()
    seen = []
    with pytest.raises(StreamErrorEvent, match="upstream exploded"):
        for chunk in decoder.feed(b'data: {"n": 1}\n\n' + event):
            seen.append(chunk)
    assert seen == [{"n": 1}]


def test_a_cr_ending_the_body_ends_its_last_line():
    assert events_of(b'data: {"n": 1}\r\rdata: [DONE]\r\r') == [{"n": 1}]
    assert events_of(b'data: {"n": 1}\r\rdata: [DONE]\r', b"\r") == [{"n": 1}]


def test_a_chunk_that_is_not_json_raises():
    with pytest.raises(ValueError):
        events_of(b"data: {not json\n\n")
