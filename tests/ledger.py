"""What ``on_error`` was handed, for the tests that account for every call made."""

from __future__ import annotations

import threading

from atrack_core import Call


class Ledger:
    """``on_error``'s calls, by the number in their uuid (``u<n>``: one user per call).

    A call handed over twice is listed in ``twice`` (an assertion here would only be
    logged: the SDK contains what ``on_error`` raises)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lost: dict[int, BaseException] = {}
        self.twice: list[int] = []

    def __call__(self, call: Call, error: BaseException) -> None:
        number = int(call.uuid.removeprefix("u"))
        with self.lock:
            if number in self.lost:
                self.twice.append(number)
            self.lost[number] = error
