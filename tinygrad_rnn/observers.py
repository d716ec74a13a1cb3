"""Observers: the debugging tools' view of the tape (trace, anomaly mode, the BPTT ledger).

Why a module of its own: observers watch the algorithm, they are not part of it. The core
calls them in two places, each behind one truth test of ``_observers`` (empty and free unless
someone listens): `Function.apply` hands them each op (``on_forward``), the backward walk each
node it runs (``on_backward``). `Unroll` and `Stack` tag the ops of a time step or a layer with
`scope` and hand each step's state to `notify_step`. The tools register themselves with
`add_observer` (tinygrad_rnn/inspect).

Observers are global, not per thread like grad mode: they are debugging tools wrapped around
a region of a program (like a profiler), and they should see the ops of every thread that runs
there; a per-thread list would cost a thread-local lookup on every op. Where each op is (the
scope: time step, layer) is per thread, since each thread's forward is at its own step.
"""

import contextlib
import threading

# Read directly by `Function.apply`, the walk and the fast paths (one truth test per op), so
# it is one list for the life of the process, changed in place, never rebound.
_observers = []


def add_observer(obs):
    _observers.append(obs)


def remove_observer(obs):
    _observers.remove(obs)


def observing():
    return bool(_observers)


def notify_step(unroll, t, out, state):
    """Tell observers that define ``on_step`` (the BPTT ledger) a step's output and state."""
    if _observers:
        for obs in list(_observers):
            on_step = getattr(obs, "on_step", None)
            if on_step is not None:
                on_step(unroll, t, out, state)


class _ScopeState(threading.local):
    current = {}            # never mutated: each scope replaces it, and puts it back on exit


_scope = _ScopeState()


def current_scope():
    """Where this thread's forward is, e.g. ``{"step": 7, "layer": 1}`` (set by `scope`)."""
    return _scope.current


def scope(**where):
    """``with observers.scope(step=t):`` tags the ops recorded inside for observers (Unroll
    and Stack do this); the previous scope comes back on exit, exceptions included. While
    nobody listens there is nothing to tag: a shared no-op block, 0.2 µs a step."""
    return _Scope(where) if _observers else _NOT_LISTENING


_NOT_LISTENING = contextlib.nullcontext()


class _Scope:
    __slots__ = ("where", "previous")

    def __init__(self, where):
        self.where = where

    def __enter__(self):
        self.previous = _scope.current
        _scope.current = {**self.previous, **self.where}
        return self

    def __exit__(self, *exc):
        _scope.current = self.previous
        return False
