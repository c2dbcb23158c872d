"""The event-stream decoder the Groq client reads chunks with (the SDK's raw streaming response)."""

import pytest

from chat.llm.sse import StreamCutShort, StreamErrorEvent, sse_chunks

pytestmark = pytest.mark.asyncio


async def lines_of(*lines: str):
    for line in lines:
        yield line


async def chunks_of(*lines: str) -> list:
    return [chunk async for chunk in sse_chunks(lines_of(*lines))]


async def test_each_event_is_one_json_object_and_done_ends_the_stream():
    chunks = await chunks_of(
        'data: {"n": 1}', "", ": a comment", 'data:{"n": 2}', "", "data: [DONE]", "", 'data: {"n": 3}', ""
    )
    assert chunks == [{"n": 1}, {"n": 2}]


async def test_data_lines_of_one_event_are_joined_with_newlines():
    assert await chunks_of('data: {"text":', 'data: "two lines"}', "", "data: [DONE]", "") == [{"text": "two lines"}]


async def test_a_body_that_ends_without_done_is_cut_short_and_its_unfinished_event_dropped():
    seen = []
    with pytest.raises(StreamCutShort):
        async for chunk in sse_chunks(lines_of('data: {"n": 1}', "", 'data: {"n": 2}')):
            seen.append(chunk)
    assert seen == [{"n": 1}]


@pytest.mark.parametrize(
    "lines",
    [
        ('data: {"error": {"message": "upstream exploded"}}', ""),
        ("event: error", 'data: {"message": "upstream exploded", "error": {"message": "upstream exploded"}}', ""),
    ],
)
async def test_an_error_event_raises_with_the_servers_message(lines):
    with pytest.raises(StreamErrorEvent, match="upstream exploded"):
        await chunks_of('data: {"n": 1}', "", *lines)


async def test_a_chunk_that_is_not_json_raises():
    with pytest.raises(ValueError):
        await chunks_of("data: {not json", "")
