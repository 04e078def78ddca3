"""The wall-clock limit of a run (`--timeout`, a fuzzer's per-input limit).

Unicorn's own emu_start timeout polls from a helper thread that cost the L1 loop ~1.7x CPU
(bench/RESULTS.md), so the limit is a thread of ours that sleeps until the deadline and then asks
the engine to stop every STOP_RETRY_S until the run loop has noticed (a stop that lands between
two emu_start calls would otherwise be lost).

The thread outlives the run it watched. A fuzzer runs thousands of short inputs a second, each
with its own limit; starting and joining a thread per run cost ~10 ms an input on a loaded
machine (each start and join waits for the other thread to get the GIL). So arming and
disarming only change the shared deadline under a lock (waking the thread only when the new
deadline comes before it would look again), and the thread exits on its own once it
has been IDLE_EXIT_S without a run (counted from the last deadline it slept towards), so a
machine that is done with does not keep one; a disarmed thread holds no engine.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol

# The longest wait the thread can make (threading.TIMEOUT_MAX, ~292 years).
MAX_TIMEOUT = threading.TIMEOUT_MAX
STOP_RETRY_S = 0.05
IDLE_EXIT_S = 1.0


class Stoppable(Protocol):
    def emu_stop(self) -> None: ...


class Watchdog:
    """One per CPU engine. `arm` before a run, `disarm` after it; every stop request is made
    under the lock that `disarm` takes, so none reaches a later run."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._engine: Stoppable | None = None
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0      # when the thread next looks at the deadline by itself

    def arm(self, engine: Stoppable, deadline: float) -> None:
        with self._cond:
            self._engine, self._deadline = engine, deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="svmemu-timeout")
                self._thread.start()
            elif deadline < self._wakes_at:
                self._cond.notify()     # a wake-up costs a GIL hand-over: only when needed

    def disarm(self) -> None:
        with self._cond:
            self._engine, self._deadline = None, None

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._wakes_at = time.monotonic() + IDLE_EXIT_S
                    if not self._cond.wait(IDLE_EXIT_S) and self._deadline is None:
                        self._thread = None
                        return
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wakes_at = self._deadline
                    self._cond.wait(left)
                    continue
                assert self._engine is not None
                self._engine.emu_stop()
                self._wakes_at = time.monotonic() + STOP_RETRY_S
                self._cond.wait(STOP_RETRY_S)
