"""Ctrl-C and SIGTERM: stop at once, or at the next safe point if Python swallowed the first attempt.

Python raises an exception from a signal handler wherever the main thread happens to be, and some places
swallow it: an exception raised inside a garbage-collection callback (JAX registers one) is printed as
"Exception ignored" and dropped, and the program carries on as if nothing happened. So the handlers of
:func:`installed` remember the signal as well as raising :class:`Interrupted`, and the long loops (every
chunk of samples, every dispatch of training steps) call :func:`check`, which raises it again if it is still
pending (and the "Exception ignored" report of the swallowed one is silenced). Unwinding runs every
``finally``, so temporaries are removed on the way out.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Optional

_pending: Optional[int] = None
_deferring = 0  # > 0 inside deferred(): a signal is only recorded


class Interrupted(BaseException):
    """A SIGINT (Ctrl-C) or SIGTERM; ``signum`` says which. A BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handle(signum, frame):
    global _pending
    _pending = signum
    if not _deferring:
        raise Interrupted(signum)


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived and its first exception was swallowed."""
    if _pending is not None:
        raise Interrupted(_pending)


@contextlib.contextmanager
def deferred():
    """A block that a signal does not break into: one that arrives meanwhile is raised when the block ends.
    For code that waits on threads of its own (the checkpoint library's event loop), which an exception
    raised in the middle leaves waiting forever."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        check()


@contextlib.contextmanager
def installed():
    """Within this block (main thread only; elsewhere it does nothing), SIGINT and SIGTERM raise
    :class:`Interrupted` and stay pending for :func:`check`."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending = None
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook

    def quiet(unraisable):  # a swallowed Interrupted is raised again by check(): do not report it
        if not isinstance(unraisable.exc_value, Interrupted):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook
        _pending = None
