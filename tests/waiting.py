"""Polling for something another thread or process does (a server's log line, a cancelled request)."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    """Whether ``predicate()`` turns true within ``timeout_s`` seconds, polled every 50 ms."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
