"""Hold a thread at a chosen function of the SDK, to run a race in a set order.

A race between two threads is reproduced by stopping one of them where the other must
overtake it (a trace hook on the thread, set for that thread only), then letting it go
on: no sleeps, no luck."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

WAIT = 30.0  # a bound for a hung test, never reached when the code is right


class PausedThread:
    """Runs ``target`` in a thread that stops on entering ``code`` (its first call;
    with ``caller``, only a call from that function) until :meth:`resume`; with
    ``hold=False`` it only sets :attr:`reached` (``reached``, when given: an event the
    test may set for another reason too) there and goes on. Exceptions from ``target``
    are kept in :attr:`errors`."""

    def __init__(
        self,
        code: CodeType,
        target: Callable[[], object],
        *,
        caller: CodeType | None = None,
        hold: bool = True,
        reached: threading.Event | None = None,
    ) -> None:
        self.reached = reached if reached is not None else threading.Event()
        self._go = threading.Event()
        self._seen = False
        self.errors: list[BaseException] = []

        def tracer(frame: FrameType, event: str, arg: Any) -> None:
            if (
                event == "call"
                and frame.f_code is code
                and (caller is None or (frame.f_back is not None and frame.f_back.f_code is caller))
                and not self._seen
            ):
                self._seen = True
                self.reached.set()
                if hold:
                    self._go.wait(WAIT)

        def run() -> None:
            sys.settrace(tracer)
            try:
                target()
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                sys.settrace(None)

        self._thread = threading.Thread(target=run, name="paused-host-thread")
        self._thread.start()

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), "the thread never reached the pause"

    def resume(self) -> None:
        """Let it go on and wait for it to end."""
        self._go.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()
