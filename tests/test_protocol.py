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
