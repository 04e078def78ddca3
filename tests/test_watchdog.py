"""The wall-clock limit's thread (emu/core/watchdog.py): it stops a run past its deadline, never
one that was disarmed in time, and it does not outlive its use."""
from __future__ import annotations

import threading
import time

from emu.core import watchdog as wd


class Engine:
    def __init__(self) -> None:
        self.stops = 0
        self.stopped = threading.Event()

    def emu_stop(self) -> None:
        self.stops += 1
        self.stopped.set()


def test_a_run_past_its_deadline_is_stopped_until_disarmed():
    w, e = wd.Watchdog(), Engine()
    w.arm(e, time.monotonic() + 0.05)
    assert e.stopped.wait(5)
    time.sleep(3 * wd.STOP_RETRY_S)
    w.disarm()
    stops = e.stops
    assert stops >= 2                      # asks again until the run loop notices
    time.sleep(3 * wd.STOP_RETRY_S)
    assert e.stops == stops                # and never after disarm


def test_a_run_disarmed_before_its_deadline_is_never_stopped_and_the_thread_is_reused():
    w, e = wd.Watchdog(), Engine()
    for _ in range(50):                    # a fuzzer's short runs, one after another
        w.arm(e, time.monotonic() + 0.2)
        w.disarm()
    thread = w._thread
    assert thread is not None and thread.is_alive()
    time.sleep(0.3)
    assert e.stops == 0
    late = Engine()                        # a shorter deadline than the thread sleeps towards
    w.arm(e, time.monotonic() + 30)
    w.disarm()
    w.arm(late, time.monotonic() + 0.05)
    assert late.stopped.wait(5)
    w.disarm()
    assert w._thread is thread and e.stops == 0


def test_the_thread_ends_when_idle_and_a_new_one_starts_on_demand():
    w, e = wd.Watchdog(), Engine()
    w.arm(e, time.monotonic() + 0.3)
    time.sleep(0.1)                        # the thread now sleeps towards the deadline
    w.disarm()
    thread = w._thread
    assert thread is not None
    thread.join(wd.IDLE_EXIT_S + 5)
    assert not thread.is_alive() and w._thread is None
    w.arm(e, time.monotonic() + 0.05)
    assert e.stopped.wait(5)
    w.disarm()
