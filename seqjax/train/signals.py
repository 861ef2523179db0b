"""SIGINT and SIGTERM during training: finish the step, write a checkpoint, then stop.

A training loop asks :class:`StopRequest` after each step whether a signal came; the first
SIGINT or SIGTERM only sets the request, so the loop can end with a final checkpoint and raise
:class:`Interrupted`. A second one raises ``KeyboardInterrupt`` at once (checkpoints are written
atomically, so even that leaves the newest good one in place). Handlers are installed only in
the main thread (Python delivers signals there alone) and put back on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal after writing a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpointed: bool):
        self.signum, self.step, self.checkpointed = signum, step, checkpointed
        saved = "a checkpoint was written there" if checkpointed else "no checkpoint was written"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {saved}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: 128 + its number."""
        return 128 + self.signum


class StopRequest:
    """Set by the first SIGINT/SIGTERM that arrives while :func:`catch_stop_signals` is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signals cannot be caught here; the caller's handlers stay as they are
        return

    def handle(signum, frame):
        del frame
        if request:  # the second signal: the user insists
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
