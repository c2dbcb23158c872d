"""Client frames: what is accepted, and the error code of everything else."""

import json

import pytest

from chat.protocol import ClientFrame, FrameError, frame_parse


def parse(text=None, binary=None, max_chars=100):
    return frame_parse(text=text, binary=binary, max_chars=max_chars)


def test_message_frame_is_accepted():
    assert parse(json.dumps({"type": "message", "content": "hi"})) == ClientFrame(kind="message", content="hi")


def test_legacy_message_shape_is_accepted():
    assert parse(json.dumps({"message": "hello"})) == ClientFrame(kind="message", content="hello")


@pytest.mark.parametrize("kind", ["stop", "ping"])
def test_control_frames_are_accepted(kind):
    assert parse(json.dumps({"type": kind})).kind == kind


@pytest.mark.parametrize(
    ("text", "binary", "code"),
    [
        ("{not json", None, "invalid_json"),
        ("", None, "invalid_json"),
        ("[1, 2]", None, "invalid_message"),
        ('"just a string"', None, "invalid_message"),
        ('{"type": "message"}', None, "invalid_message"),
        ('{"type": "message", "content": "   "}', None, "invalid_message"),
        ('{"type": "message", "content": 42}', None, "invalid_message"),
        ('{"message": null}', None, "invalid_message"),
        ('{"type": "dance"}', None, "invalid_message"),
        ('{"content": "no type"}', None, "invalid_message"),
        (None, b"\x00\x01", "invalid_message"),
        (json.dumps({"type": "message", "content": "x" * 101}), None, "message_too_large"),
        ("x" * 10_000, None, "message_too_large"),
    ],
)
def test_bad_frames_get_their_error_code(text, binary, code):
    with pytest.raises(FrameError) as caught:
        parse(text, binary)
    assert caught.value.code == code
    assert caught.value.message


def test_message_at_the_limit_is_accepted():
    assert parse(json.dumps({"type": "message", "content": "é" * 100})).content == "é" * 100


@pytest.mark.parametrize(
    "text",
    [
        r'{"type": "message", "content": "a\u0000b"}',
        r'{"message": "\u0000"}',
        r'{"type": "message", "content": "half a pair: \ud83d"}',
        r'{"type": "message", "content": "\udc00 low half first"}',
        r'{"type": "message", "content": "reversed pair \ude00\ud83d"}',
    ],
)
def test_nul_and_lone_surrogates_are_refused_as_invalid_message(text):
    with pytest.raises(FrameError) as caught:
        parse(text)
    assert caught.value.code == "invalid_message"
    assert "NUL" in caught.value.message or "surrogate" in caught.value.message


def test_a_surrogate_pair_escape_is_one_character_and_accepted():
    frame = parse(r'{"type": "message", "content": "smile \ud83d\ude00"}')
    assert frame.content == "smile \U0001f600"
    frame.content.encode("utf-8")


def test_a_raw_control_character_inside_a_json_string_is_invalid_json():
    with pytest.raises(FrameError) as caught:
        parse('{"type": "message", "content": "a\x00b"}')
    assert caught.value.code == "invalid_json"


def test_nesting_deeper_than_the_parser_goes_is_invalid_json_not_a_crash():
    with pytest.raises(FrameError) as caught:
        frame_parse(text="[" * 20_000, binary=None, max_chars=16_000)
    assert caught.value.code == "invalid_json"
