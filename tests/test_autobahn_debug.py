"""autobahn's per-handshake debug formatting, deferred until a log line is written."""

import pprint

from autobahn.websocket import protocol

from llmbacker.autobahn_debug import lazy_pformat_install


def test_debug_values_are_formatted_only_when_written_and_then_as_before():
    import llmbacker.asgi  # noqa: F401 (installs it, as daphne's import of the application does)

    assert lazy_pformat_install() is True
    value = {"peer": "tcp4:127.0.0.1:5555", "attrs": [("openHandshakeTimeout", 5, "Factory")] * 3}
    deferred = protocol.pformat(value)
    assert not isinstance(deferred, str)
    # What a debug log line shows is unchanged.
    assert "{attrs}".format(attrs=deferred) == pprint.pformat(value) == str(deferred)  # noqa: UP032 (as the logger does)
    timings = protocol.Timings()
    timings.track("start")
    assert isinstance(str(timings), str) and "start" in str(timings)
