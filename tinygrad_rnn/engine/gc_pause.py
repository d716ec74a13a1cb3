"""Keep Python's cyclic garbage collector off the tape while it grows and shrinks."""

import contextlib
import gc


@contextlib.contextmanager
def gc_paused(keep_new_objects=False):
    """Pause Python's cyclic garbage collector (reference counting still frees everything).

    The tape has no reference cycles (a node points to its inputs, never to its outputs), so
    the collector can free nothing in it, yet while a long tape grows or shrinks each of its
    passes re-scans every node: for an unrolled sequence that was a third of the run time.
    PyTorch's tape lives in C++, out of the collector's sight; pausing it is our equivalent.
    The backward walk and Unroll's loop (`engine.fast_sequence`) run inside it.

    ``keep_new_objects=True`` (Unroll, which leaves a whole new tape behind) also moves the
    objects made meanwhile to the collector's oldest generation on exit, without scanning
    them; otherwise the first young-generation pass afterwards scans the entire new tape
    once (15% of an LSTM forward at T=100, 25% at T=2000) and finds nothing to free.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep_new_objects and gc.get_freeze_count() == 0:
            # freeze() then unfreeze() is that move, in O(1): documented, unfreeze puts the
            # objects back into the oldest generation. Skipped if the program froze objects.
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()
