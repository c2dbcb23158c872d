"""A sliding-window limit on how many messages one connection may send."""

import time
from collections import deque


class MessageRateLimit:
    """Allow at most `limit` messages in any `window` seconds."""

    def __init__(self, *, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def allow(self) -> bool:
        """Count one message and return whether it is within the limit."""
        now = time.monotonic()
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()
        if self.limit > 0 and len(self._sent) >= self.limit:
            return False
        self._sent.append(now)
        return True

    def retry_after(self) -> float:
        """Return the seconds until the next message would be allowed."""
        if not self._sent:
            return 0.0
        return max(0.0, round(self.window - (time.monotonic() - self._sent[0]), 1))
