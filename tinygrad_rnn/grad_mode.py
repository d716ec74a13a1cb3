"""Grad mode: whether ops record on the tape, per thread (``no_grad``, ``enable_grad``).

Why a module of its own: it is a switch around the algorithm, not part of it. `Function.apply`
and the fast paths read ``_grad_mode.enabled`` directly, one attribute read per op (a function
call there would cost more than the check); everything else calls `is_grad_enabled`.
"""

import functools
import threading


class _GradModeState(threading.local):
    # A class default, so that reading it in a thread that never set it does not raise
    # internally (getattr with a default on a missing attribute costs ~1 µs, on every op).
    enabled = True


_grad_mode = _GradModeState()      # imported by name by the core: never rebound


def is_grad_enabled():
    return _grad_mode.enabled


class _GradMode:
    """Context manager and decorator that sets grad recording for the current thread."""

    enabled = True

    def __enter__(self):
        self._prev = is_grad_enabled()
        _grad_mode.enabled = self.enabled

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """``with tg.no_grad():`` (or ``@tg.no_grad()``) records nothing on the tape."""

    enabled = False


class enable_grad(_GradMode):
    """Re-enables recording inside a ``no_grad`` block."""

    enabled = True
