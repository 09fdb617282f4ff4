"""``atrack_core.testing`` under threads: a capture may end while another thread is
in the middle of a call (a web app's worker, a background job)."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest

from atrack_core import ATrackSdk, Options
from atrack_core.testing import CapturedCalls, capture_calls
from tests.pause import WAIT, PausedThread

KEY = "pub_live_abcdefgh_1234"


@pytest.mark.parametrize("nested", [False, True])
def test_a_capture_may_end_while_another_thread_is_tracking(nested: bool) -> None:
    with ATrackSdk(Options(KEY, disabled=True)) as sdk, ExitStack() as stack:
        outer = stack.enter_context(capture_calls())
        inner = stack.enter_context(capture_calls()) if nested else outer
        # A host app's thread, held where its track() has decided to capture.
        thread = PausedThread(
            ATrackSdk._override_delivery.__code__, lambda: sdk.track("late", uuid="u")
        )
        thread.wait_reached()
        stack.close()  # every capture ends while the thread is inside its call
        thread.resume()
        # After the captures, calls go to the SDK's own delivery again.
        sdk.track("after", uuid="u")
    assert thread.errors == []
    # The call began inside the innermost capture: it is recorded there, once.
    assert inner.event_names() == ["late"]
    if nested:
        assert outer.event_names() == []


def test_captures_of_several_threads_end_in_any_order() -> None:
    # Two threads each open a capture; the first one opened ends first.
    opened = [threading.Event(), threading.Event()]
    close = [threading.Event(), threading.Event()]
    captured: list[CapturedCalls] = []

    def run(i: int) -> None:
        with capture_calls() as calls:
            captured.append(calls)
            opened[i].set()
            close[i].wait(WAIT)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    threads[0].start()
    assert opened[0].wait(WAIT)
    threads[1].start()
    assert opened[1].wait(WAIT)
    with ATrackSdk(Options(KEY, disabled=True)) as sdk:
        close[0].set()
        threads[0].join(WAIT)
        sdk.track("while_second_is_open", uuid="u")
        close[1].set()
        threads[1].join(WAIT)
        sdk.track("after_both", uuid="u")
    first, second = captured
    assert first.event_names() == []
    assert second.event_names() == ["while_second_is_open"]
